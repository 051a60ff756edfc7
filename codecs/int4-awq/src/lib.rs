//! TenPak codec `int4_awq` (being written).
