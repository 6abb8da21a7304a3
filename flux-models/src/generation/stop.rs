//! Stop strings over streamed text: text is released only once it cannot be the start of a
//! stop string, so a caller never prints what is then cut.

/// Watches streamed text for stop strings.
#[derive(Debug, Clone)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

impl StopStrings {
    /// Watches for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `piece`; returns the text that is now final and the stop string, if one appeared
    /// (the returned text then ends right before it).
    pub fn push(&mut self, piece: &str) -> (String, Option<String>) {
        self.pending.push_str(piece);
        let first_hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = first_hit {
            let stop = stop.clone();
            let ready = self.pending[..at].to_string();
            self.pending.clear();
            return (ready, Some(stop));
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices()
                    .skip(1)
                    .map(move |(len, _)| &stop[..len])
            })
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let ready = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (ready, None)
    }

    /// Releases what is held back (generation ended without a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut s = StopStrings::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for p in pieces {
            let (ready, hit) = s.push(p);
            out.push_str(&ready);
            if hit.is_some() {
                return (out, hit);
            }
        }
        out.push_str(&s.finish());
        (out, None)
    }

    #[test]
    fn stop_split_across_pieces_is_cut_and_never_released() {
        let mut s = StopStrings::new(&["<END>".to_string()]);
        let (a, _) = s.push("hello <E");
        assert_eq!(a, "hello ");
        let (b, hit) = s.push("ND> more");
        assert_eq!((b.as_str(), hit.as_deref()), ("", Some("<END>")));
        assert_eq!(
            run(&["\n\n"], &["a\n", "\nb"]),
            ("a".to_string(), Some("\n\n".to_string()))
        );
    }

    #[test]
    fn no_stop_releases_everything() {
        assert_eq!(
            run(&["xyz"], &["ab", "cx", "y"]),
            ("abcxy".to_string(), None)
        );
        assert_eq!(run(&[], &["é", "漢字"]), ("é漢字".to_string(), None));
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(
            run(&["b", "a"], &["xab"]),
            ("x".to_string(), Some("a".to_string()))
        );
    }
}
