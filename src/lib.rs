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

pub mod api;
pub mod backoff;
pub mod capture;
pub mod cli;
pub mod cmd;
pub mod decode;
pub mod forward;
pub mod logging;
pub mod mqtt;
pub mod output;
pub mod pipeline;
pub mod ratelimit;
pub mod reading;
pub mod secret;
pub mod soc_filter;
pub mod spool;
pub mod state_dir;
pub mod status;
pub mod tls;
pub mod topic;
