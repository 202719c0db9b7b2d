//! Real-kernel tests (root): two emulated nodes in network namespaces.
