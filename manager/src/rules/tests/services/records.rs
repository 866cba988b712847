//! A service's record stays within one NATS message however many versions it has had.

use super::*;

#[test]
fn a_service_remembers_only_as_many_versions_as_fit_one_message() {
    let mut h = Harness::new(&["w1"]);
    let big = |n: usize| {
        let mut s = spec("web", 1);
        // Each template nearly as large as a submission may be.
        s.template.env = (0..25)
            .map(|i| format!("V{i}={n}{}", "x".repeat(8_000)).into())
            .collect();
        s
    };
    h.service_event(&ServiceEvent::deploy(big(0)));
    for n in 1..12 {
        let d = h.service_event(&ServiceEvent::deploy(big(n)));
        assert!(d.rejections.is_empty(), "{:?}", d.rejections);
        let record = d.services.last().expect("the record is stored");
        let size = encode(record).len();
        assert!(size <= 768 * 1024, "{size} bytes");
        assert_eq!(record.version, n as u64 + 1, "the new version is kept");
        if let Some(from) = record.rollout.as_ref().and_then(|r| r.from) {
            assert!(
                record.version_of(from).is_some(),
                "what it reverts to is kept"
            );
        }
    }
    let versions = h.status("web").service.versions.len();
    assert!((2..12).contains(&versions), "{versions} versions kept");
}
