//! The readiness line of a process that serves HTTP, for people and for whoever started it from a
//! terminal or a test: once it listens, the process prints one line on stdout,
//! `<who> serving on <url>[ <detail>]`, and the starter reads the URL back. [`line`] is the only
//! writer and [`url`] the only reader. (A squall server does not read its versions' output, which
//! goes to their log file: they announce themselves in their runtime file, `version/runfile.rs`.)

/// The readiness line of `who` (e.g. `squall: personalization-v1`) serving at `url`.
pub fn line(who: &str, url: &str) -> String {
    format!("{who} serving on {url}")
}

/// The URL a readiness line announces; `None` for any other line.
pub fn url(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(" serving on ")?;
    let url = rest.split_whitespace().next()?;
    (url.starts_with("http://") || url.starts_with("https://")).then_some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_reads_what_the_writer_writes() {
        let l = line("squall: p-v1", "http://127.0.0.1:4321");
        assert_eq!(l, "squall: p-v1 serving on http://127.0.0.1:4321");
        assert_eq!(url(&l), Some("http://127.0.0.1:4321"));
        let server = format!("{} (state in .squall)", line("squall server:", "http://127.0.0.1:7070"));
        assert_eq!(url(&server), Some("http://127.0.0.1:7070"));
        assert_eq!(url("squall: p-v1 recovered from checkpoint cut 7"), None);
        assert_eq!(url("someone said serving on tuesday"), None);
    }
}
