//! Time as the core sees it: a number passed in. The core never reads a
//! clock; the shell reads one and hands `now` to every decision.

/// Milliseconds since the Unix epoch, UTC.
pub type UnixMillis = i64;

/// Unix seconds as carried in ride codes, from milliseconds; times before
/// 1970 or after 2106 clamp, and such codes fail their checks anyway.
pub fn unix_secs_u32(at: UnixMillis) -> u32 {
    u32::try_from(at.div_euclid(1000)).unwrap_or(if at < 0 { 0 } else { u32::MAX })
}
