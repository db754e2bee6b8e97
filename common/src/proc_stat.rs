//! Fields of `/proc/<pid>/stat` (proc(5)), read past the command name, which may itself hold
//! spaces and parentheses: the one parser crid and crimon share.

/// Field `n` of `/proc/<pid>/stat`, numbered as in proc(5) (4 is the parent pid, 22 the start
/// time in clock ticks since boot); None when the process is gone or the field does not parse.
pub fn field<T: std::str::FromStr>(pid: i32, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_field(&stat, n)
}

/// Field `n` (as in proc(5), 3 or more) of the text of a stat file.
fn parse_field<T: std::str::FromStr>(stat: &str, n: usize) -> Option<T> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The parent of `pid`.
pub fn parent(pid: i32) -> Option<i32> {
    field(pid, 4)
}

/// The start time of `pid` (clock ticks after boot), to tell it from a later process that
/// reuses its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    field(pid, 22)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_past_a_name_with_spaces_and_parentheses() {
        let stat = "42 (a) b (c)) S 7 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        assert_eq!(parse_field::<char>(stat, 3), Some('S'));
        assert_eq!(parse_field::<i32>(stat, 4), Some(7));
        assert_eq!(parse_field::<u64>(stat, 22), Some(12345));
        assert_eq!(parse_field::<u64>(stat, 2), None);
        assert_eq!(parse_field::<u64>(stat, 99), None);
        let own = std::process::id() as i32;
        assert_eq!(
            parent(own),
            Some(std::os::unix::process::parent_id() as i32)
        );
        assert!(start_time(own).is_some());
    }
}
