//! Small bridges to the browser: a clock, a turn of the event loop, reading a plain JS options object, and
//! Rust values handed to JS as plain objects (through JSON, so field names are the serde names).

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// `performance.now()`, or `Date.now()` where there is no window (a worker without `performance`).
pub fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map(|p| p.now()).unwrap_or_else(js_sys::Date::now)
}

/// Resolves on a later macrotask (`setTimeout(0)`), so the page can paint and handle input in between.
pub async fn next_macrotask() {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let global = js_sys::global();
        let set_timeout = js_sys::Reflect::get(&global, &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) if f.call2(&global, &resolve, &0.into()).is_ok() => {}
            _ => {
                let _ = resolve.call0(&JsValue::UNDEFINED);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

fn field(obj: &JsValue, key: &str) -> Option<JsValue> {
    if !obj.is_object() {
        return None;
    }
    js_sys::Reflect::get(obj, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// `obj[key]` as a string, if set.
pub fn opt_str(obj: &JsValue, key: &str) -> Result<Option<String>, JsError> {
    field(obj, key)
        .map(|v| v.as_string().ok_or_else(|| JsError::new(&format!("option {key} must be a string"))))
        .transpose()
}

/// `obj[key]` as a number, if set.
pub fn opt_f64(obj: &JsValue, key: &str) -> Result<Option<f64>, JsError> {
    field(obj, key)
        .map(|v| v.as_f64().ok_or_else(|| JsError::new(&format!("option {key} must be a number"))))
        .transpose()
}

/// `obj[key]` as a whole number >= 0, if set.
pub fn opt_usize(obj: &JsValue, key: &str) -> Result<Option<usize>, JsError> {
    match opt_f64(obj, key)? {
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= u32::MAX as f64 => Ok(Some(x as usize)),
        Some(x) => Err(JsError::new(&format!("option {key} must be a whole number >= 0, not {x}"))),
        None => Ok(None),
    }
}

/// `obj[key]` as a boolean, if set.
pub fn opt_bool(obj: &JsValue, key: &str) -> Result<Option<bool>, JsError> {
    field(obj, key)
        .map(|v| v.as_bool().ok_or_else(|| JsError::new(&format!("option {key} must be true or false"))))
        .transpose()
}

/// The most messages one conversation may hold (a bound before anything is copied out of JS).
const MAX_MESSAGES: u32 = 4096;

/// `[{role, content}, ...]` from JS: every message an object with string `role` and `content`.
pub fn chat_messages(v: &JsValue) -> Result<Vec<omex::tokenizer::ChatMessage>, JsError> {
    let arr: &js_sys::Array = v.dyn_ref().ok_or_else(|| JsError::new("messages must be an array"))?;
    if arr.length() == 0 || arr.length() > MAX_MESSAGES {
        return Err(JsError::new(&format!("messages holds {} entries: give 1 to {MAX_MESSAGES}", arr.length())));
    }
    let mut out = Vec::with_capacity(arr.length() as usize);
    for (i, m) in arr.iter().enumerate() {
        let get = |k: &str| opt_str(&m, k)?.ok_or_else(|| JsError::new(&format!("messages[{i}].{k} must be a string")));
        out.push(omex::tokenizer::ChatMessage::new(get("role")?, get("content")?));
    }
    Ok(out)
}

/// A serializable Rust value as a plain JS object.
pub fn to_js<T: serde::Serialize>(value: &T) -> JsValue {
    let json = serde_json::to_string(value).expect("plain data serializes");
    js_sys::JSON::parse(&json).expect("serde_json writes valid JSON")
}

pub fn error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}
