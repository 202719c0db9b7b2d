//! Fixtures shared by testbed's tests, so each one exists once: sample NodeSpecs (`node_spec`), a blocking
//! HTTP client for the node agent's API (`agent_http`), what the host can do (`host`: root, QEMU), a real etcd on loopback (`etcd`) and helpers
//! for the end-to-end tests that drive labs through the `testbed` binary (`lab`), and the real kubectl against
//! a lab (`kubectl`), and one running lab whose nodes a test kills, freezes and resumes (`vm_lab`).
//!
//! A dev-dependency only: nothing here is part of a shipped binary.

pub mod agent_http;
pub mod etcd;
pub mod host;
pub mod host_snapshot;
pub mod kubectl;
pub mod lab;
pub mod node_spec;
pub mod vm_lab;
