//! The committed CRDs (crds/ and the chart's copy) must equal what the Rust types
//! generate. Run `make crds` after changing a type.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["crds", "charts/berth/crds"] {
        let mut expected_files = Vec::new();
        for crd in berth::crd::all() {
            let file = berth::crd::file_name(&crd);
            let path = root.join(dir).join(&file);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds`", path.display()));
            let generated = berth::crd::to_yaml(std::slice::from_ref(&crd)).expect("yaml");
            assert!(
                committed == generated,
                "{} differs from the Rust types; run `make crds`",
                path.display()
            );
            expected_files.push(file);
        }
        let mut present: Vec<String> = std::fs::read_dir(root.join(dir))
            .expect("read crds dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        expected_files.sort();
        assert_eq!(present, expected_files, "stray or missing files in {dir}");
    }
}

#[test]
fn the_charts_app_version_is_the_crates_version() {
    let chart = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/berth/Chart.yaml"),
    )
    .expect("Chart.yaml");
    let chart: serde_json::Value = serde_yaml::from_str(&chart).expect("yaml");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "charts/berth/Chart.yaml appVersion"
    );
}
