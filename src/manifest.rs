//! IoT Edge deployment manifests: the files users deploy today.
//!
//! A manifest is `{"modulesContent": {"$edgeAgent": {"properties.desired": {...}},
//! "$edgeHub": {"properties.desired": {...}}}}`, possibly wrapped in `{"content": ...}` as the
//! Azure CLI writes it.

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The `modulesContent` of a manifest.
///
/// # Errors
///
/// When the document has no `modulesContent` object.
pub fn modules_content(manifest: &Value) -> Result<&Value> {
    let content = manifest.get("content").unwrap_or(manifest);
    match content.get("modulesContent") {
        Some(v @ Value::Object(_)) => Ok(v),
        _ => bail!("the deployment manifest has no \"modulesContent\" object"),
    }
}

/// The desired properties of the module twin `module` (e.g. `$edgeHub`).
///
/// # Errors
///
/// When the manifest does not hold them.
pub fn desired_properties<'m>(manifest: &'m Value, module: &str) -> Result<&'m Value> {
    modules_content(manifest)?
        .get(module)
        .with_context(|| format!("the deployment manifest has no \"{module}\" in modulesContent"))?
        .get("properties.desired")
        .with_context(|| {
            format!("\"{module}\" in the deployment manifest has no \"properties.desired\"")
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_edge_hub_desired_properties_with_or_without_content_wrapper() {
        let inner = json!({"modulesContent": {"$edgeHub": {"properties.desired": {"schemaVersion": "1.1"}}}});
        assert_eq!(
            desired_properties(&inner, "$edgeHub").unwrap()["schemaVersion"],
            "1.1"
        );
        let wrapped = json!({"content": inner});
        assert_eq!(
            desired_properties(&wrapped, "$edgeHub").unwrap()["schemaVersion"],
            "1.1"
        );
        assert!(desired_properties(&json!({}), "$edgeHub").is_err());
    }
}
