//! Tests of the dashboard model.
