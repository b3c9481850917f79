//! pv3's integration tests, as one crate: one binary to build and link
//! instead of one per file, sharing one compiled copy of `support/`.
//!
//! Run one file's tests with its module name as the filter:
//! `cargo test --test it watch::`. Each module starts real things (an MQTT
//! broker, a recording API, the pv3 binary) on loopback ports of its own,
//! so they run in parallel.

mod support;

mod addon;
mod backfill;
mod capture;
mod collect;
mod container;
mod devices;
mod docs;
mod energy;
mod faults;
mod forwarder;
mod harness;
mod home_assistant;
mod landing;
mod links;
mod migrating;
mod mqtt_tls_auth;
mod ops;
mod package;
mod prometheus;
mod properties;
mod publish_safety;
mod queue;
mod reliability;
mod structure;
mod terminal;
mod watch;
