//! Names of devices, buses, loads and ledger members: they become parts of point names,
//! topics, file names and ledger keys, so one rule says what they may contain.

/// Whether `s` may name a device, bus, load or ledger member: 1 to 64 letters, digits, '-',
/// '_' or '.'.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}
