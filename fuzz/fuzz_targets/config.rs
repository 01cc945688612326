//! The configuration file: any text through `Config::parse`, which `edgehub run` and every
//! command with `--config` call.

#![no_main]

use std::path::Path;

use edgehub::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for path in ["/etc/edgehub/edgehub.toml", "edgehub.toml"] {
        if let Ok(config) = Config::parse(text, Path::new(path)) {
            let _ = config.hostnames();
            edgehub::identity::validate_device_id(&config.device_id)
                .expect("a configuration that loads has a valid device id");
        }
    }
});
