//! Image references, read as the Docker engine reads them (the grammar of
//! `github.com/distribution/reference`, which the engine parses every reference with):
//!
//! ```text
//! reference   := name [ ":" tag ] [ "@" digest ]
//! name        := [ domain "/" ] path-component ( "/" path-component )*
//! domain      := domain-component ( "." domain-component )* [ ":" port ]
//! path-component := [a-z0-9]+ ( separator [a-z0-9]+ )*
//! separator   := "_" | "." | "__" | "-"+
//! tag         := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest      := algorithm ":" hex      (sha256: 64, sha384: 96, sha512: 128 lowercase hex)
//! ```
//!
//! The first component is a registry when it holds `.` or `:` or is `localhost` and reads as a
//! domain; one that holds `.` but does not read as a domain is a path component, as the
//! engine's regular expression falls back to (`v1.2__latest/app`). That is how engines up to
//! 20.10 read it; later ones also take an uppercase first component for a registry, which Cube
//! refuses, as the older engines do. `tests/tests/image_refs.rs` holds this to the real engine.

use super::{excerpt, MAX_IMAGE_LEN};

/// Checks an image reference the way Docker reads one; the error says what is wrong.
pub fn validate_image(image: &str) -> Result<(), String> {
    if image.len() > MAX_IMAGE_LEN {
        return Err(format!("longer than {MAX_IMAGE_LEN} characters"));
    }
    let bad = |what: &str| Err(format!("`{}`: {what}", excerpt(image)));
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        if !is_digest(d) {
            return bad("bad digest (sha256, sha384 or sha512 and its lowercase hex)");
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        if !is_tag(tag) {
            return bad("bad tag (letters, digits, _ . -, not starting with . or -, at most 128)");
        }
    }
    let all_paths = |p: &str| p.split('/').all(is_path_component);
    // A first component that looks like a registry is one if it reads as one; else the engine
    // reads it as a path component (`v1.2__latest/app` is a name on Docker Hub).
    let ok = match name.split_once('/') {
        Some((first, path)) if is_domain_like(first) => {
            if !is_domain(first) && !is_path_component(first) {
                return bad("bad registry host (letters, digits and - between dots, then :port)");
            }
            (is_domain(first) && all_paths(path)) || all_paths(name)
        }
        _ => all_paths(name),
    };
    if !ok {
        return bad(
            "not an image reference (name components are lowercase letters and digits, \
             joined by one . or _, two _, or dashes)",
        );
    }
    Ok(())
}

/// Whether the engine takes the name's first component for a registry.
fn is_domain_like(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost"
}

fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && host.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        })
}

fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    // Every run of separators between two alphanumerics is `.`, `_`, `__` or dashes.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let ok = match &b[start..i] {
            b"." | b"_" | b"__" => true,
            run => run.iter().all(|&s| s == b'-'),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

fn is_digest(d: &str) -> bool {
    let Some((algo, hex)) = d.split_once(':') else {
        return false;
    };
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// References on both sides of every rule above, for this module's tests and for the test
/// that asks the Docker engine about each (`tests/tests/image_refs.rs`).
pub const VALID_EXAMPLES: &[&str] = &[
    "busybox",
    "nginx:1.27",
    "library/nginx",
    "localhost:5000/team/app:v1.2-rc",
    "cube-busybox:test",
    "a__b",
    "a-b",
    "a--b",
    "a.b:5000/x",
    "a_b/c",
    "a:_t",
    "Registry.Example/app",
    "x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "a1b2_c3/d--e:Tag_1.0-x",
    // Not a host (`_`), so a path component: the engine found it (random seed 9634048123312557545).
    "v1.2__latest/a5000",
];

/// Pieces a reference is made of, each on some side of a rule above: random references for
/// tests are strings of them, often slightly wrong.
pub const REFERENCE_PIECES: &[&str] = &[
    "a",
    "b1",
    "z",
    "9",
    "A",
    "x",
    ".",
    "_",
    "__",
    "___",
    "-",
    "--",
    "/",
    ":",
    "5000",
    "localhost",
    "reg.io",
    "@sha256:",
    "latest",
    "v1.2",
    "Tag",
    "-x",
    ".y",
];

pub const INVALID_EXAMPLES: &[&str] = &[
    "",
    "Nginx",
    "nginx:",
    "a b",
    "nginx:bad tag",
    "x@sha256:zz",
    "x@sha256:0123456789abcdef0123456789abcdef",
    "x@md5:0123456789abcdef0123456789abcdef",
    "/x",
    "a//b",
    "a..b",
    "a___b",
    "a.-b",
    "a_-b",
    "_a",
    "a-",
    "a..b:5000/x",
    "host:abc/x",
    "-host.io/x",
    "host.io:/x",
    "nginx:.tag",
    "nginx:-tag",
    "reg.io/App",
    "REG/app",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_are_judged_as_docker_judges_them() {
        for ok in VALID_EXAMPLES {
            validate_image(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in INVALID_EXAMPLES {
            assert!(validate_image(bad).is_err(), "{bad} should be rejected");
        }
    }

    /// The pattern the OpenAPI document gives `TaskSpec.image` (what schemathesis and any
    /// client generate from) accepts exactly what [`validate_image`] accepts.
    #[test]
    fn the_openapi_pattern_is_this_grammar() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../web/assets/openapi.json")).unwrap();
        let schema = &doc["components"]["schemas"]["TaskSpec"]["properties"]["image"];
        let pattern = jsonschema::validator_for(schema).expect("a schema");
        let judge = |s: &str| {
            let by_pattern = pattern.is_valid(&serde_json::Value::String(s.to_string()));
            assert_eq!(by_pattern, validate_image(s).is_ok(), "`{s}`");
        };
        VALID_EXAMPLES
            .iter()
            .chain(INVALID_EXAMPLES)
            .for_each(|s| judge(s));
        use proptest::strategy::{Strategy, ValueTree};
        let mut pieces = REFERENCE_PIECES.to_vec();
        pieces.push("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        let pieces = proptest::sample::select(pieces);
        let strategy = proptest::collection::vec(pieces, 1..7).prop_map(|p| p.concat());
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for _ in 0..5000 {
            judge(&strategy.new_tree(&mut runner).unwrap().current());
        }
    }

    #[test]
    fn a_long_name_is_refused_with_its_reason() {
        let long = format!("{}:1", "a".repeat(256));
        assert!(validate_image(&long).unwrap_err().contains("255"));
    }
}
