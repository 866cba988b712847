//! The output chunker's rules.

use super::*;

fn line(output: Output, text: &str, second: i64) -> LogLine {
    LogLine {
        output,
        time: DateTime::from_timestamp(second, 0),
        bytes: Bytes::from(text.to_string()),
    }
}

#[test]
fn small_writes_are_batched_until_a_chunk_is_full() {
    let mut c = Chunker::new(10);
    assert!(c.push(line(Output::Stdout, "abc\n", 1)).is_empty());
    assert!(c.push(line(Output::Stdout, "def\n", 2)).is_empty());
    let done = c.push(line(Output::Stdout, "ghi\n", 3));
    assert_eq!(done.len(), 1);
    assert_eq!(&done[0].bytes[..], b"abc\ndef\ngh");
    // The last line that ends in the chunk is the second: resuming repeats "ghi", never
    // skips it.
    assert_eq!(done[0].time, DateTime::from_timestamp(2, 0));
    let rest = c.flush().expect("the rest");
    assert_eq!(&rest.bytes[..], b"i\n");
    assert_eq!(rest.time, DateTime::from_timestamp(3, 0));
    assert!(c.is_empty() && c.flush().is_none());
}

#[test]
fn stdout_and_stderr_never_share_a_chunk() {
    let mut c = Chunker::new(100);
    assert!(c.push(line(Output::Stdout, "out\n", 1)).is_empty());
    let done = c.push(line(Output::Stderr, "err\n", 2));
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].output, &done[0].bytes[..]),
        (Output::Stdout, &b"out\n"[..])
    );
    let rest = c.flush().expect("stderr");
    assert_eq!(
        (rest.output, &rest.bytes[..]),
        (Output::Stderr, &b"err\n"[..])
    );
}

#[test]
fn a_long_line_is_split_and_nothing_is_lost() {
    let mut c = Chunker::new(4);
    let text = "0123456789";
    let mut all = Vec::new();
    let done = c.push(line(Output::Stderr, text, 5));
    assert_eq!(done.len(), 2, "two full chunks, the rest buffered");
    assert!(done.iter().all(|d| d.bytes.len() == 4));
    for d in done.into_iter().chain(c.flush()) {
        all.extend_from_slice(&d.bytes);
    }
    assert_eq!(all, text.as_bytes());
}

#[test]
fn chunks_never_exceed_the_limit_whatever_the_input() {
    let mut c = Chunker::new(7);
    let mut out = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let text = "x".repeat((i % 23) as usize) + "\n";
        expected.extend_from_slice(text.as_bytes());
        let output = if i % 5 == 0 {
            Output::Stderr
        } else {
            Output::Stdout
        };
        for chunk in c.push(line(output, &text, i as i64)) {
            assert!(!chunk.bytes.is_empty() && chunk.bytes.len() <= 7);
            out.push(chunk);
        }
    }
    out.extend(c.flush());
    let joined: Vec<u8> = out.iter().flat_map(|c| c.bytes.to_vec()).collect();
    assert_eq!(joined, expected);
}
