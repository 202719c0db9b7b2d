//! Tests of parsing, validation positions and planning.
