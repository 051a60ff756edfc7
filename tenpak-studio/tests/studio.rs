//! tenpak-studio's own checks: its configuration and the confinement of names to their roots.
//! (The service itself, over HTTP on loopback, is tested through `tenpak serve` in the `tenpak`
//! crate.)

/// The configuration refuses what would make the service unsafe or ambiguous, naming the key.
#[test]
fn studio_config_refuses_unsafe_settings() {
    use tenpak_studio::config::StudioConfig;
    let tmp = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let path = tmp.path().join("studio.toml");
        std::fs::write(&path, text).unwrap();
        StudioConfig::load(&path).and_then(|c| c.token().map(|t| (c, t)))
    };
    let err = load("listen = \"0.0.0.0:8686\"\n").unwrap_err().to_string();
    assert!(err.contains("token"), "{err}");
    let (config, token) = load("listen = \"0.0.0.0:8686\"\ntoken = \"x\"\n").unwrap();
    assert_eq!((config.listen.port(), token.as_deref()), (8686, Some("x")));
    std::fs::write(tmp.path().join("token"), "from-file\n").unwrap();
    let (config, token) = load("token_file = \"token\"\nworkers = 2\n").unwrap();
    assert_eq!((token.as_deref(), config.workers), (Some("from-file"), 2));
    assert_eq!(config.data_dir, tmp.path().join("studio-data"), "paths are relative to the file");
    assert!(load("token = \"a\"\ntoken_file = \"token\"\n").unwrap_err().to_string().contains("not both"));
    assert!(load("token = \"\"\n").unwrap_err().to_string().contains("empty"));
    assert!(load("workers = 0\n").unwrap_err().to_string().contains("workers"));
    let err = load("listne = \"127.0.0.1:1\"\n").unwrap_err().to_string();
    assert!(err.contains("listne"), "{err}");
    let (config, _) = load("[limits]\noverrides = 10\nctx = 4096\n").unwrap();
    assert_eq!((config.limits.overrides, config.limits.ctx, config.limits.candidates), (10, 4096, 64), "unset limits keep their defaults");
    let err = load("[limits]\noveriddes = 10\n").unwrap_err().to_string();
    assert!(err.contains("overiddes"), "{err}");
    let defaults = StudioConfig::default();
    assert_eq!(defaults.max_header_bytes, 65536);
    assert_eq!(defaults.listen.to_string(), "127.0.0.1:8686");
    assert!(defaults.token().unwrap().is_none(), "loopback without a token is allowed");
}

/// Names resolve inside their root only, whatever the file system does.
#[test]
fn studio_names_stay_inside_their_roots() {
    use std::collections::BTreeMap;
    use tenpak_error::Kind;
    use tenpak_studio::roots::Roots;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/m.gguf"), b"x").unwrap();
    std::fs::write(tmp.path().join("secret.txt"), b"x").unwrap();
    std::os::unix::fs::symlink(root.join("sub/m.gguf"), root.join("inside.gguf")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret.txt"), root.join("outside.txt")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), root.join("up")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("gone"), root.join("dangling")).unwrap();
    let roots = Roots::new(&BTreeMap::from([("m".to_string(), root.clone())])).unwrap();
    let real = root.canonicalize().unwrap();
    assert_eq!(roots.resolve("m/sub/m.gguf").unwrap(), real.join("sub/m.gguf"));
    assert_eq!(roots.resolve("m/inside.gguf").unwrap(), real.join("sub/m.gguf"), "a link inside the root is fine");
    let kind = |name: &str| roots.resolve(name).unwrap_err().or_kind(Kind::Internal).kind();
    for name in ["m/outside.txt", "m/up/secret.txt", "m/../secret.txt", "m//sub/m.gguf", "m/sub/./m.gguf", "/m/sub/m.gguf", "m", "m/", "m/a\0", "m\\sub", "m/dangling"] {
        assert_eq!(kind(name), Kind::BadRequest, "{name:?}");
    }
    assert_eq!(kind("m/sub/nope.gguf"), Kind::NotFound);
    assert_eq!(kind("other/sub/m.gguf"), Kind::NotFound);
    assert!(Roots::new(&BTreeMap::from([("..".to_string(), root.clone())])).is_err());
    assert!(Roots::new(&BTreeMap::from([("x".to_string(), tmp.path().join("missing"))])).is_err());
}
