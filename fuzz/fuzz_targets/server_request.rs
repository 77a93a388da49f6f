//! The server's request parsing: a JSON body as `/sdapi/v1/txt2img` and `img2img` read it, field
//! by field, against an empty model catalog. Must hold: no panic; an `ApiError` or a spec.
#![no_main]

use kairos_server::a1111::{parse, Context};
use kairos_server::body::parse_object;
use kairos_server::catalog::Catalog;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| Catalog::new(None, None, None))
}

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = parse_object(data) else { return };
    let options = serde_json::Map::new();
    let ctx = Context { catalog: catalog(), options: &options, max_pixels: 2048 * 2048 };
    for img2img in [false, true] {
        let _ = parse(&obj, img2img, &ctx);
    }
});
