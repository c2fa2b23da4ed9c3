//! The ingest service: consumes banking events from Kafka, renders and stores notifications, produces delivery jobs.
