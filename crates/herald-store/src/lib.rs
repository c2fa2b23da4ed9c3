//! The notification store: one port, a ScyllaDB adapter and an embedded SQLite adapter.
