//! aspen-operator.
