//! `ctl` turns shell words back into one chat line (`join_words`) and the
//! broker splits it again (`lexer::split`): on any words, the words that
//! come back are the words that went in (or the line is refused as too
//! long / too many words), and the lexer never panics on any line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultgram::command::lexer::{split, LexError, MAX_WORDS};
use vaultgram::transport::socket::join_words;

fuzz_target!(|input: (String, Vec<String>)| {
    let (line, words) = input;
    let _ = split(&line);
    let joined = join_words(&words);
    match split(&joined) {
        Ok(back) => assert_eq!(back, words, "{joined:?}"),
        Err(LexError::TooLong(_)) => {}
        Err(LexError::TooManyWords) => assert!(words.len() > MAX_WORDS),
        Err(e) => panic!("{joined:?} from {words:?}: {e}"),
    }
});
