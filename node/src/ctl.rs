//! Human output of `aspenctl`: aligned tables of keys, members and statuses.

use crate::api::{MemberProgress, MembershipView, NodeStatus, Role, ScanResponse};

/// How `aspenctl` prints answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The API's JSON, for scripts.
    Json,
}

/// Renders rows under a header with columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn or_dash(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn role(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "stopped",
    }
}

/// Bytes in the largest binary unit that keeps the number at least 1.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn scan_table(page: &ScanResponse) -> String {
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|kv| vec![kv.key.clone(), kv.revision.to_string(), kv.value.clone()])
        .collect();
    let mut out = table(&["KEY", "REVISION", "VALUE"], &rows);
    if let Some(cursor) = &page.next_cursor {
        out.push_str(&format!("(more: --cursor {cursor:?})\n"));
    }
    out
}

pub fn membership_table(view: &MembershipView, progress: Option<&[MemberProgress]>) -> String {
    let lag = |id: u64| {
        progress
            .and_then(|p| p.iter().find(|m| m.node_id == id))
            .map_or_else(|| "-".to_owned(), |m| m.lag.to_string())
    };
    let rows: Vec<Vec<String>> = view
        .voters
        .iter()
        .map(|m| (m, "voter"))
        .chain(view.learners.iter().map(|m| (m, "learner")))
        .map(|(m, kind)| {
            vec![
                m.node_id.to_string(),
                kind.to_owned(),
                m.client_addr.clone(),
                m.peer_addr.clone(),
                lag(m.node_id),
            ]
        })
        .collect();
    let mut out = table(&["ID", "ROLE", "CLIENT", "PEER", "LAG"], &rows);
    if view.joint {
        out.push_str("(joint configuration: a membership change is in progress)\n");
    }
    out
}

pub fn status_table(statuses: &[(String, Result<NodeStatus, String>)]) -> String {
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|(endpoint, status)| match status {
            Ok(s) => vec![
                endpoint.clone(),
                s.node_id.to_string(),
                if s.removed { "removed" } else { role(s.role) }.to_owned(),
                s.term.to_string(),
                or_dash(s.leader_id),
                or_dash(s.last_log_index),
                or_dash(s.last_applied_index),
                format!(
                    "{} / {}",
                    human_bytes(s.storage.disk_bytes),
                    human_bytes(s.storage.max_bytes)
                ),
            ],
            Err(e) => vec![endpoint.clone(), "-".into(), format!("unreachable: {e}")],
        })
        .map(|mut row| {
            row.resize(8, String::new());
            row
        })
        .collect();
    table(
        &[
            "ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "LAST LOG", "APPLIED", "DB SIZE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let out = table(
            &["A", "B"],
            &[
                vec!["long cell".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(out, "A          B\nlong cell  x\ns          y\n");
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
