//! A small text form of graphs, for pass tests.
