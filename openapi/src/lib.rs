//! The OpenAPI 3.1 document of telemed's HTTP API.
