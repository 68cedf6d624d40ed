//! The OCI images `make images` writes to target/images (tools/images.sh), read back as
//! a registry or a runtime would: through `skopeo inspect oci:DIR`, then the blobs the
//! manifest names, checked against their digests.
//!
//! The module's image must be the Wasm image spec's "compat" variant that Istio's
//! WasmPlugin and Envoy Gateway fetch: one `tar+gzip` layer holding `plugin.wasm`, byte for
//! byte the module every other test loads. The control service's image must be the static
//! binary on an empty base, run as a non-root user that owns its data volume; the binary
//! taken out of the image must start and answer `/healthz`.
//!
//! The images, skopeo and tar must be there (`make images` builds the images and installs
//! skopeo; `make test` runs it first): missing is a failure, never a reason to skip.
//! `GATEHOUSE_IMAGES` points at another directory of images.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::envoy::control::{ControlOptions, ControlService};
use gatehouse_harness::envoy::{default_wasm, workspace_root};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_JSON: &str = "application/vnd.oci.image.config.v1+json";
const SOURCE: &str = "https://github.com/gatehouse-dev/gatehouse";
const NONROOT: &str = "65532:65532";
const DATA_DIR: &str = "/var/lib/gatehouse";
const ENTRYPOINT: &str = "/usr/local/bin/gatehouse-control";

fn images_dir() -> PathBuf {
    match std::env::var_os("GATEHOUSE_IMAGES") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/images"),
    }
}

/// Runs a tool and returns its standard output; a missing tool or a failure panics with
/// what to do.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): `make images` installs skopeo, umoci and tar")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}\n(build the images with `make images`)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One image of target/images: its manifest and config as skopeo reads them.
struct Image {
    dir: PathBuf,
    manifest: Value,
    config: Value,
}

impl Image {
    fn open(name: &str) -> Image {
        let dir = images_dir().join(name);
        assert!(
            dir.join("index.json").is_file(),
            "no OCI image layout at {}: build it with `make images`",
            dir.display()
        );
        let reference = format!("oci:{}", dir.display());
        let manifest = run("skopeo", &["inspect", "--raw", &reference]);
        let config = run("skopeo", &["inspect", "--config", "--raw", &reference]);
        Image {
            manifest: serde_json::from_slice(&manifest).expect("the manifest is JSON"),
            config: serde_json::from_slice(&config).expect("the config is JSON"),
            dir,
        }
    }

    fn annotation(&self, key: &str) -> &str {
        self.manifest["annotations"][key]
            .as_str()
            .unwrap_or_else(|| panic!("no manifest annotation {key}: {}", self.manifest))
    }

    /// The only layer: its blob, after checking its media type, size and digest.
    fn single_layer(&self) -> PathBuf {
        let layers = self.manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "one layer: {}", self.manifest);
        let layer = &layers[0];
        assert_eq!(layer["mediaType"], LAYER_TAR_GZIP);
        let digest = layer["digest"].as_str().expect("a layer digest");
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let blob = self.dir.join("blobs/sha256").join(hex);
        let bytes = fs::read(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
        assert_eq!(Some(bytes.len() as u64), layer["size"].as_u64());
        assert_eq!(
            base16ct::lower::encode_string(&Sha256::digest(&bytes)),
            hex,
            "the layer's digest"
        );
        blob
    }
}

/// `tar -tv` of a gzipped layer: (mode, uid/gid, path) per entry.
fn listing(blob: &Path) -> Vec<(String, String, String)> {
    let blob = blob.to_str().expect("a UTF-8 path");
    let out = run("tar", &["--numeric-owner", "-tvzf", blob]);
    String::from_utf8(out)
        .expect("a UTF-8 listing")
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "a tar listing line: {line}");
            let path = fields[5..].join(" ");
            (fields[0].to_string(), fields[1].to_string(), path)
        })
        .collect()
}

/// Unpacks a gzipped layer into a new scratch directory.
fn unpack(blob: &Path, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatehouse-image-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    run(
        "tar",
        &["-xzf", blob.to_str().unwrap(), "-C", dir.to_str().unwrap()],
    );
    dir
}

/// The commit the images must have been built from.
fn head_revision() -> String {
    let out = run(
        "git",
        &[
            "-C",
            workspace_root().to_str().unwrap(),
            "rev-parse",
            "HEAD",
        ],
    );
    String::from_utf8(out).unwrap().trim().to_string()
}

fn assert_standard_annotations(image: &Image) {
    assert_eq!(
        image.annotation("org.opencontainers.image.version"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(image.annotation("org.opencontainers.image.source"), SOURCE);
    let revision = image.annotation("org.opencontainers.image.revision");
    let head = head_revision();
    assert!(
        revision == head || revision == format!("{head}-dirty"),
        "revision {revision} is not HEAD ({head}): rebuild with `make images`"
    );
    let created = image.annotation("org.opencontainers.image.created");
    assert_eq!(created, image.config["created"], "created, in both");
    assert_eq!(image.manifest["schemaVersion"], 2);
    assert_eq!(image.manifest["config"]["mediaType"], CONFIG_JSON);
}

#[test]
fn the_wasm_image_is_the_compat_variant_istio_and_envoy_gateway_fetch() {
    let image = Image::open("gatehouse-wasm");
    assert_eq!(image.annotation("module.wasm.image/variant"), "compat");
    assert_standard_annotations(&image);
    let entries = listing(&image.single_layer());
    let paths: Vec<&str> = entries.iter().map(|(_, _, p)| p.as_str()).collect();
    assert_eq!(paths, ["plugin.wasm"], "plugin.wasm and nothing else");
}

#[test]
fn the_module_in_the_wasm_image_is_byte_identical_to_the_one_the_tests_load() {
    let image = Image::open("gatehouse-wasm");
    let dir = unpack(&image.single_layer(), "wasm");
    let in_image = fs::read(dir.join("plugin.wasm")).unwrap();
    let wasm = default_wasm();
    let tested = fs::read(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e} (`make wasm`, then `make images`)", wasm.display()));
    assert!(
        in_image == tested,
        "plugin.wasm ({} bytes) is not {} ({} bytes): rebuild with `make images`",
        in_image.len(),
        wasm.display(),
        tested.len()
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_control_image_runs_as_nonroot_with_its_data_directory_a_volume() {
    let image = Image::open("gatehouse-control");
    assert_standard_annotations(&image);
    let config = &image.config["config"];
    assert_eq!(config["User"], NONROOT);
    assert_eq!(config["Entrypoint"], serde_json::json!([ENTRYPOINT]));
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
    assert!(config["Volumes"][DATA_DIR].is_object(), "{config}");
    assert!(config["ExposedPorts"]["8081/tcp"].is_object(), "{config}");
    let env: Vec<&str> = config["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        env.contains(&"GATEHOUSE_CONTROL_LISTEN=0.0.0.0:8081"),
        "{env:?}"
    );
    assert!(
        env.contains(&"GATEHOUSE_DATABASE_URL=sqlite:///var/lib/gatehouse/control.db"),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|kv| kv.contains("TOKEN")),
        "no token is baked in: {env:?}"
    );

    let entries = listing(&image.single_layer());
    let entry = |path: &str| {
        entries
            .iter()
            .find(|(_, _, p)| p == path)
            .unwrap_or_else(|| panic!("no {path} in the layer: {entries:?}"))
    };
    let (mode, owner, _) = entry("var/lib/gatehouse/");
    assert_eq!(
        (mode.as_str(), owner.as_str()),
        ("drwx------", "65532/65532")
    );
    let (mode, owner, _) = entry("usr/local/bin/gatehouse-control");
    assert_eq!((mode.as_str(), owner.as_str()), ("-rwxr-xr-x", "0/0"));
    // An empty base: the binary, /tmp for SQLite, the names of the users, directories.
    for (mode, _, path) in &entries {
        assert!(
            mode.starts_with('d')
                || ["etc/passwd", "etc/group", "usr/local/bin/gatehouse-control"]
                    .contains(&path.as_str()),
            "unexpected {path} in the layer"
        );
    }
}

/// No program interpreter (`PT_INTERP`): the binary needs no libc from the image, which
/// has none.
#[test]
fn the_control_binary_in_the_image_is_statically_linked() {
    let image = Image::open("gatehouse-control");
    let dir = unpack(&image.single_layer(), "control-elf");
    let elf = fs::read(dir.join("usr/local/bin/gatehouse-control")).unwrap();
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
        assert_ne!(p_type, PT_INTERP, "the binary asks for a dynamic loader");
    }
    fs::remove_dir_all(dir).unwrap();
}

/// The binary out of the image, with the image's environment, the tokens given at run time,
/// a scratch database and a free port instead of the image's 0.0.0.0:8081.
#[test]
fn the_control_binary_in_the_image_answers_healthz() {
    let image = Image::open("gatehouse-control");
    let dir = unpack(&image.single_layer(), "control-run");
    let env = image.config["config"]["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let control = ControlService::start(&ControlOptions {
        binary: Some(dir.join(ENTRYPOINT.trim_start_matches('/'))),
        env,
        ..ControlOptions::new()
    })
    .unwrap_or_else(|e| panic!("the image's gatehouse-control did not start: {e:#}"));
    let (status, body) = control.admin("GET", "/healthz", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    drop(control);
    fs::remove_dir_all(dir).unwrap();
}
