//! The local backend: a memory ring for the API and a file writer.
