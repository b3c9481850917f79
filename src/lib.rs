//! pv3: a toolkit for the Powervault P3 home battery.
//!
//! The binary (`src/main.rs`) is a thin shell over this library so that the
//! integration tests and benchmarks drive exactly the code users run. The
//! shape of every command is the same pipeline with different ends:
//!
//! ```text
//! source ──▶ decode ──▶ SOC filter ──▶ sink
//! MQTT (mqtt)  (decode)   (soc_filter)   API (forward + api) / stdout (output)
//! ```
//!
//! [`pipeline`] joins the decoder and the SOC filter; nothing outside
//! [`decode`] knows what a payload looks like.

#![warn(missing_docs)]

// The PV3 Monitor API client.
pub mod api;
// Retry delays with jitter, for the API and MQTT.
pub mod backoff;
// Capture files: what `sniff` writes and `replay` reads.
pub mod capture;
// Which P3s publish on a broker (`pv3 devices`, collect's device hint).
pub mod census;
// The command line (clap definitions).
pub mod cli;
// One module per subcommand.
pub mod cmd;
// P3 topics and payloads to measurements and alarm states.
pub mod decode;
// collect's hint when nothing arrives for its --device-id.
pub mod device_hint;
// Energy counters integrated from power readings, kept across restarts.
pub mod energy;
// Batching, queueing, retry and delivery to the API.
pub mod forward;
// Numbers as people read them (durations).
pub mod human;
// The undocumented knobs tests shorten intervals with.
pub mod knobs;
// Logging set-up.
pub mod logging;
// Per-metric metadata for the outputs: Home Assistant classes, Prometheus names.
pub mod metric_info;
// The MQTT connection: options, reconnects, subscriptions.
pub mod mqtt;
// Printing readings for `--dry-run`.
pub mod output;
// Where `collect` sends readings (the API, stdout).
pub mod outputs;
// Decode + SOC filter, with the counts the summaries report.
pub mod pipeline;
// Warnings that log at most once per window.
pub mod ratelimit;
// The data model every stage shares.
pub mod reading;
// Strings kept out of logs (passwords, tokens).
pub mod secret;
// Holds back one-off SOC jumps.
pub mod soc_filter;
// The on-disk store behind the forwarder's spool.
pub mod spool;
// The state directory and what lives in it.
pub mod state_dir;
// `status.json`: what a running collector says about itself.
pub mod status;
// TLS set-up for MQTT and HTTP.
pub mod tls;
pub mod topic;
