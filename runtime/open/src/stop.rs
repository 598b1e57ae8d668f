//! Stop strings over streamed text: the generated text arrives in pieces,
//! and what is released must never include a stop string or anything after
//! it. A piece is held back while its end could still become the start of
//! a stop string.
//!
//! Used by chat turns and `kiln serve` ([`crate::conversation`]) and by the
//! Python package's generation.

/// The text generated so far and how much of it was released.
#[derive(Debug, Default, Clone)]
pub struct StopText {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` released so far (a char boundary).
    sent: usize,
}

/// What one step releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// New text to hand on (may be empty).
    pub piece: String,
    /// A stop string was reached: `piece` is the text before it, and
    /// nothing more is to be released.
    pub stopped: bool,
}

impl StopText {
    /// Watch for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..StopText::default()
        }
    }

    /// Append a decoded piece; release what can no longer start a stop string.
    pub fn push(&mut self, piece: &str) -> Release {
        self.text.push_str(piece);
        self.release(false)
    }

    /// The text is complete: `full` (the decoding of every generated token,
    /// when it extends what was pushed) replaces it, and all of it not cut
    /// by a stop string is released.
    pub fn finish(&mut self, full: Option<String>) -> Release {
        if let Some(full) = full
            && full.len() > self.text.len()
            && full.starts_with(&self.text)
        {
            self.text = full;
        }
        self.release(true)
    }

    fn release(&mut self, last: bool) -> Release {
        if let Some(at) = find_stop(&self.text, self.sent, &self.stops) {
            let piece = self.text[self.sent..at].to_string();
            // Nothing after the stop string is ever released.
            self.sent = self.text.len();
            return Release {
                piece,
                stopped: true,
            };
        }
        let end = if last {
            self.text.len()
        } else {
            release_end(&self.text, self.sent, &self.stops)
        };
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        Release {
            piece,
            stopped: false,
        }
    }
}

/// Where the earliest stop string starts in `text[from..]`, if one is there.
/// None starts before `from`: whatever could begin one was held back.
pub fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
    (stops.iter())
        .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
        .min()
}

/// How far `text` can be released: all but its longest suffix (after
/// `from`) that is a proper prefix of a stop string, since it may yet
/// complete one.
pub fn release_end(text: &str, from: usize, stops: &[String]) -> usize {
    let mut end = text.len();
    for s in stops {
        let longest = (1..s.len())
            .rev()
            .find(|&k| s.is_char_boundary(k) && text[from..].ends_with(&s[..k]));
        if let Some(k) = longest {
            end = end.min(text.len() - k);
        }
    }
    end.max(from)
}

#[cfg(test)]
mod tests {
    use super::{Release, StopText, find_stop, release_end};

    fn go(piece: &str) -> Release {
        Release {
            piece: piece.into(),
            stopped: false,
        }
    }

    fn stop_after(piece: &str) -> Release {
        Release {
            piece: piece.into(),
            stopped: true,
        }
    }

    fn watch(stops: &[&str]) -> StopText {
        StopText::new(stops.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn without_stop_strings_every_piece_is_released_at_once() {
        let mut t = watch(&[]);
        assert_eq!(t.push("Hello"), go("Hello"));
        assert_eq!(t.push(", world"), go(", world"));
        assert_eq!(t.finish(None), go(""));
        // Empty stop strings would stop at once; they are ignored.
        let mut t = watch(&[""]);
        assert_eq!(t.push("abc"), go("abc"));
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_never_released() {
        let mut t = watch(&["</s>"]);
        assert_eq!(t.push("Hello <"), go("Hello "));
        assert_eq!(t.push("/"), go(""));
        assert_eq!(t.push("s> and more"), stop_after(""));
    }

    #[test]
    fn held_back_text_is_released_once_it_cannot_start_a_stop_string() {
        let mut t = watch(&["abc"]);
        assert_eq!(t.push("xa"), go("x"));
        assert_eq!(t.push("b"), go(""));
        assert_eq!(t.push("d"), go("abd"));
        assert_eq!(t.push("ab"), go(""));
        // The end: what was held back is released.
        assert_eq!(t.finish(None), go("ab"));
    }

    #[test]
    fn the_earliest_stop_string_wins_and_the_text_before_it_is_released() {
        let mut t = watch(&["cd", "b"]);
        assert_eq!(t.push("abcd"), stop_after("a"));
        let mut t = watch(&["a"]);
        assert_eq!(t.push("abc"), stop_after(""));
        let mut t = watch(&["\n\n", "\n"]);
        assert_eq!(t.push(" Paris."), go(" Paris."));
        assert_eq!(t.push("\n\nThe"), stop_after(""));
    }

    #[test]
    fn multi_byte_characters_are_held_and_cut_on_char_boundaries() {
        let mut t = watch(&["é!"]);
        assert_eq!(t.push("caf"), go("caf"));
        assert_eq!(t.push("é"), go(""));
        assert_eq!(t.push("?"), go("é?"));
        let mut t = watch(&["日本"]);
        assert_eq!(t.push("x日"), go("x"));
        assert_eq!(t.push("本語"), stop_after(""));
        // A stop string sharing a first byte with the text, not a first char.
        let mut t = watch(&["é"]);
        assert_eq!(t.push("è"), go("è"));
    }

    #[test]
    fn finish_takes_the_full_decoding_when_it_extends_the_text() {
        let mut t = watch(&[]);
        assert_eq!(t.push("he"), go("he"));
        assert_eq!(t.finish(Some("hello".into())), go("llo"));
        // The full text can complete a stop string.
        let mut t = watch(&["lo"]);
        assert_eq!(t.push("hel"), go("he"));
        assert_eq!(t.finish(Some("hello!".into())), stop_after("l"));
        // A decoding that does not extend what was released is ignored.
        let mut t = watch(&[]);
        assert_eq!(t.push("abc"), go("abc"));
        assert_eq!(t.finish(Some("xyz".into())), go(""));
    }

    #[test]
    fn find_stop_and_release_end() {
        let stops = vec!["abc".to_string(), "bd".to_string()];
        assert_eq!(find_stop("xxabcbd", 0, &stops), Some(2));
        assert_eq!(find_stop("xxabcbd", 3, &stops), Some(5));
        assert_eq!(find_stop("xxab", 0, &stops), None);
        // "ab" could start "abc", and "b" could start "bd": hold back the longer.
        assert_eq!(release_end("xxab", 0, &stops), 2);
        assert_eq!(release_end("xxb", 0, &stops), 2);
        assert_eq!(release_end("xxc", 0, &stops), 3);
        // Never before what was already released.
        assert_eq!(release_end("xxab", 3, &stops), 3);
    }
}
