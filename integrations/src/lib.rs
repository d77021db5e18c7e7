//! NCPDP SCRIPT 2017071 messages, pharmacy-network transport and notification delivery.
