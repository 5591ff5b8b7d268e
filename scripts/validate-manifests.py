#!/usr/bin/env python3
"""Validate Kubernetes manifests offline, every object against a schema.

- Built-in kinds: the Kubernetes OpenAPI schemas of each --kube-version, as
  packaged by kubernetes-validate, in their strict form (unknown fields are
  errors). Every error is reported, not only the first.
- AspenCluster: the openAPIV3Schema of the CRD given with --crd, with unknown
  fields made errors as the API server's strict field validation does, and
  its metadata against Kubernetes' ObjectMeta. CEL rules
  (x-kubernetes-validations) are not evaluated here; the operator's own tests
  evaluate them.
- ServiceMonitor, PodMonitor, PrometheusRule: the prometheus-operator API as
  modelled by cloudcoil-models-prometheus-operator, unknown fields as errors.
- PromQL: the alert rules and every query of a Grafana dashboard ConfigMap
  (label grafana_dashboard) go through `promtool check rules`; with
  --rule-tests, the PrometheusRule's alerts also run the given
  `promtool test rules` unit tests.

An object of any other kind, a duplicate object, or a file that does not
parse is an error. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kubernetes_validate
from referencing import Registry, Resource

MONITORING_API = "monitoring.coreos.com/v1"
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
DASHBOARD_LABEL = "grafana_dashboard"
# Values given to Grafana's variables so that a dashboard query parses as
# PromQL; the longest names first, so that $__rate_interval is not read as
# $__rate followed by text.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${cluster}": "default/example",
    "$cluster": "default/example",
}


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.checked = 0

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")


def strict_schema(node: Any) -> Any:
    """A copy of an OpenAPI v3 schema (as CRDs hold it) as plain JSON Schema
    that refuses unknown fields, allows `nullable` nulls and states what
    x-kubernetes-int-or-string means."""
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_schema(value) for key, value in node.items()}
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["type"] = ["integer", "string"]
    if out.pop("nullable", False) and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def strict_json_schema(node: Any) -> Any:
    """Refuse unknown fields in every object of a JSON Schema that lists its
    properties (pydantic's schemas allow them)."""
    if isinstance(node, list):
        return [strict_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_json_schema(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


Draft = jsonschema.Draft202012Validator


def kubernetes_schema(name: str, version: str) -> Draft:
    """The strict kubernetes-validate schema file `name` of `version`."""
    directory = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kubernetes_validate.schema_contents(f"{directory}/{name}", version)
    definitions = kubernetes_validate.schema_contents(f"{directory}/_definitions.json", version)
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return Draft(schema, registry=registry)


def format_error(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path) or "(root)"
    return f"{path}: {error.message}"


class Validator:
    def __init__(self, crd_path: Path, kube_versions: list[str], report: Report) -> None:
        self.report = report
        self.kube_versions = kube_versions
        self.custom: dict[tuple[str, str], Draft] = {}
        self.object_meta = [kubernetes_schema("objectmeta-meta-v1.json", v) for v in kube_versions]
        self.builtin: dict[tuple[str, str], Draft | None] = {}
        self.monitoring: dict[str, Draft] = {}
        self.seen: dict[tuple[str, str, str, str], str] = {}
        self.rule_groups: list[tuple[str, dict]] = []
        self.prometheus_rules: list[tuple[str, dict]] = []
        self.dashboard_queries: list[tuple[str, str]] = []
        self.load_crd(crd_path)

    def load_crd(self, path: Path) -> None:
        crd = yaml.safe_load(path.read_text())
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            # The API server checks these itself, whatever the CRD says;
            # metadata is checked against ObjectMeta below.
            schema.setdefault("properties", {}).update(
                apiVersion={"const": f"{group}/{version['name']}"},
                kind={"const": kind},
                metadata={"type": "object"},
            )
            Draft.check_schema(schema)
            self.custom[(f"{group}/{version['name']}", kind)] = Draft(schema)

    def monitoring_validator(self, kind: str) -> Draft:
        if kind not in self.monitoring:
            from cloudcoil.models.prometheus_operator import v1 as monitoring

            model = getattr(monitoring, kind)
            schema = strict_json_schema(model.model_json_schema(by_alias=True, mode="validation"))
            self.monitoring[kind] = Draft(schema)
        return self.monitoring[kind]

    def check(self, where: str, document: Any) -> None:
        report = self.report
        report.checked += 1
        if not isinstance(document, dict):
            report.error(where, "not a mapping")
            return
        api_version = document.get("apiVersion")
        kind = document.get("kind")
        name = (document.get("metadata") or {}).get("name")
        if not (isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)):
            report.error(where, "apiVersion, kind and metadata.name are required")
            return
        where = f"{where} {kind}/{name}"
        namespace = document["metadata"].get("namespace", "")
        key = (api_version, kind, namespace, name)
        if key in self.seen:
            report.error(where, f"duplicate of the object at {self.seen[key]}")
        self.seen[key] = where

        if (api_version, kind) in self.custom:
            self.check_with(where, self.custom[(api_version, kind)], document)
            for version, object_meta in zip(self.kube_versions, self.object_meta):
                self.check_with(where, object_meta, document["metadata"], f"Kubernetes {version}: metadata.")
        elif api_version == MONITORING_API and kind in MONITORING_KINDS:
            self.check_with(where, self.monitoring_validator(kind), document)
            if kind == "PrometheusRule":
                self.prometheus_rules.append((where, document))
                for group in (document.get("spec") or {}).get("groups") or []:
                    self.rule_groups.append((where, group))
        else:
            self.check_builtin(where, document)
            if kind == "ConfigMap" and DASHBOARD_LABEL in (document["metadata"].get("labels") or {}):
                self.check_dashboards(where, document)

    def check_with(self, where: str, validator: Draft, instance: Any, prefix: str = "") -> None:
        for error in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
            self.report.error(where, prefix + format_error(error))

    def check_builtin(self, where: str, document: dict) -> None:
        # kubernetes-validate names its schema files kind-group-version.json,
        # the group cut at its first dot (rbac.authorization.k8s.io/v1 -> rbac-v1).
        api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", document["apiVersion"])
        name = f"{document['kind'].lower()}-{api}.json"
        for version in self.kube_versions:
            key = (name, version)
            if key not in self.builtin:
                try:
                    self.builtin[key] = kubernetes_schema(name, version)
                except FileNotFoundError:
                    self.builtin[key] = None
            validator = self.builtin[key]
            if validator is None:
                self.report.error(where, f"Kubernetes {version} has no {document['apiVersion']} {document['kind']}")
                continue
            self.check_with(where, validator, document, f"Kubernetes {version}: ")

    def check_dashboards(self, where: str, config_map: dict) -> None:
        for key, text in (config_map.get("data") or {}).items():
            if not key.endswith(".json"):
                self.report.error(where, f"data.{key}: a dashboard's key must end in .json")
                continue
            try:
                dashboard = json.loads(text)
            except json.JSONDecodeError as error:
                self.report.error(where, f"data.{key}: not JSON: {error}")
                continue
            self.check_dashboard(f"{where} data.{key}", dashboard)

    def check_dashboard(self, where: str, dashboard: dict) -> None:
        for field in ("uid", "title", "panels", "templating", "schemaVersion"):
            if field not in dashboard:
                self.report.error(where, f"no {field}")
        ids = set()
        for panel in dashboard.get("panels", []):
            title = panel.get("title", "?")
            if panel.get("id") in ids:
                self.report.error(where, f"panel {title!r}: id {panel.get('id')} is used twice")
            ids.add(panel.get("id"))
            grid = panel.get("gridPos", {})
            if not (0 <= grid.get("x", -1) and grid.get("x", 0) + grid.get("w", 99) <= 24):
                self.report.error(where, f"panel {title!r}: gridPos outside the 24 columns")
            if panel.get("type") == "row":
                continue
            targets = panel.get("targets") or []
            if not targets:
                self.report.error(where, f"panel {title!r}: no queries")
            for target in targets:
                expr = target.get("expr")
                if not isinstance(expr, str) or not expr.strip():
                    self.report.error(where, f"panel {title!r}: query {target.get('refId')} has no expr")
                    continue
                self.dashboard_queries.append((f"{where} panel {title!r}", expr))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable.get("definition", "")
                match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
                if not match:
                    self.report.error(where, f"variable {variable.get('name')}: unexpected query {query!r}")
                else:
                    self.dashboard_queries.append((f"{where} variable {variable.get('name')}", match.group(1)))


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def run_promtool(promtool: str, arguments: list[str], report: Report, what: str, legend: str = "") -> None:
    result = subprocess.run([promtool, *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        report.error(what, f"promtool {' '.join(arguments[:2])} failed:\n{output}{legend}")


def check_promql(validator: Validator, promtool: str, rule_tests: Path | None, report: Report) -> None:
    groups = [group for _, group in validator.rule_groups]
    queries = validator.dashboard_queries
    if queries:
        rules = [
            {"record": f"dashboard:query_{index}", "expr": grafana_to_promql(expr)}
            for index, (_, expr) in enumerate(queries)
        ]
        groups.append({"name": "dashboard-queries", "rules": rules})
    with tempfile.TemporaryDirectory() as scratch:
        if groups:
            path = Path(scratch, "rules.yaml")
            path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
            legend = "".join(f"\n  dashboard:query_{index} is {where}" for index, (where, _) in enumerate(queries))
            run_promtool(
                promtool, ["check", "rules", str(path)], report, "PromQL of the alert rules and dashboards", legend
            )
        if rule_tests is None:
            return
        if len(validator.prometheus_rules) != 1:
            report.error(str(rule_tests), f"needs exactly one PrometheusRule, found {len(validator.prometheus_rules)}")
            return
        _, rule = validator.prometheus_rules[0]
        Path(scratch, "alerts.yaml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
        tests = Path(scratch, rule_tests.name)
        shutil.copyfile(rule_tests, tests)
        run_promtool(promtool, ["test", "rules", str(tests)], report, str(rule_tests))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="YAML files, one or more objects each")
    parser.add_argument("--crd", type=Path, required=True, help="the AspenCluster CRD")
    parser.add_argument(
        "--kube-version", action="append", required=True, help="Kubernetes version to validate against (repeatable)"
    )
    parser.add_argument("--promtool", default="promtool", help="promtool binary")
    parser.add_argument(
        "--rule-tests", type=Path, help="promtool unit tests for the one PrometheusRule among the files (alerts.yaml)"
    )
    args = parser.parse_args()

    report = Report()
    validator = Validator(args.crd, args.kube_version, report)
    for path in args.files:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as error:
            report.error(str(path), f"cannot read: {error}")
            continue
        objects = [d for d in documents if d is not None]
        # Each file is one set of objects to apply: names repeat across files.
        validator.seen.clear()
        if not objects:
            report.error(str(path), "holds no object")
        for index, document in enumerate(objects, start=1):
            validator.check(f"{path}#{index}", document)
    check_promql(validator, args.promtool, args.rule_tests, report)

    for error in report.errors:
        print(f"error: {error}")
    versions = ", ".join(args.kube_version)
    print(
        f"{report.checked} objects in {len(args.files)} files checked against Kubernetes {versions}, "
        f"{len(validator.rule_groups)} rule groups and {len(validator.dashboard_queries)} dashboard queries: "
        f"{len(report.errors)} errors"
    )
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
