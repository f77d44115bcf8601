//! A background thread that may fall behind gives way to the ones that
//! answer gateways: it runs at a higher nice value, so under a burst the
//! kernel hands it only what the QUIC workers and the log leave, and it
//! catches up when the burst ends. An unprivileged process may raise its
//! threads' nice values but never lower them again, so this is set once,
//! at the thread's start.

/// The most a thread can give way: Linux's lowest priority.
pub const NICE_MAX: u8 = 19;

/// Sets the calling thread's nice value (0: as the rest of the server,
/// up to [`NICE_MAX`]). On Linux a nice value set for a thread id holds
/// for that thread alone.
pub fn give_way(nice: u8) -> Result<(), String> {
    assert!(nice <= NICE_MAX, "nice {nice} beyond {NICE_MAX}: the config's range admits no more");
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), i32::from(nice))
        .map_err(|errno| format!("setting this thread's nice value to {nice}: {errno}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_thread_nice() -> Result<i32, String> {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).map_err(|errno| errno.to_string())
    }

    /// The nice value reaches the thread that asked and no other.
    #[test]
    fn a_thread_that_gives_way_leaves_the_others_as_they_were() {
        let before = this_thread_nice().expect("this thread's nice value");
        let target = u8::try_from((before + 5).clamp(0, i32::from(NICE_MAX))).expect("clamped");
        let seen = std::thread::spawn(move || {
            give_way(target).expect("raising a nice value needs no privilege");
            this_thread_nice().expect("the helper's nice value")
        })
        .join()
        .expect("the helper thread");
        assert_eq!(seen, i32::from(target));
        assert_eq!(this_thread_nice().expect("again"), before, "the calling thread keeps its own");
    }
}
