//! What the fuzz targets (`fuzz/`, issue 11) found, one test per finding, through the public
//! API. Each test names the target that found it.

use edgehub::twin::Twins;

/// `twin_patch`: a float of a reported patch is read back from the twin's file as another
/// number: serde_json, without its `float_roundtrip` feature, parses `1.5e200` one unit in the
/// last place off (1.5000000000000001e200), writes that, and reads the file back as 1.5e200.
/// The twin a client got changed when the hub restarted; fixed by serde_json's
/// `float_roundtrip` feature (workspace `Cargo.toml`).
#[test]
fn a_reported_float_reads_back_the_same_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let twins = Twins::new(dir.path().to_owned());
    twins
        .patch_reported("leaf", br#"{"r": 1.5e200}"#)
        .unwrap()
        .unwrap();
    let before = twins.get("leaf").unwrap();
    let after = Twins::new(dir.path().to_owned()).get("leaf").unwrap();
    assert_eq!(after, before);
    assert_eq!(after["reported"]["r"].as_f64(), Some(1.5e200));
}
