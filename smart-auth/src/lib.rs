//! SMART App Launch 2.x authorization server, bearer-token checks and scope/compartment rules.
