//! nftables through its JSON interface (the `nftables` crate runs
//! `nft -j -f -`), from a thread inside the target network namespace (the
//! `nft` child inherits it). Shared by the bindings.

use std::path::Path;

use serde_json::json;

/// Apply `doc` (nft's JSON), checked first against the crate's schema
/// types. The error is a sentence for the caller's error type.
pub(crate) fn apply(netns: Option<&Path>, doc: serde_json::Value) -> Result<(), String> {
    let doc: nftables::schema::Nftables<'static> = serde_json::from_value(doc)
        .map_err(|e| format!("rule set does not fit the schema: {e}"))?;
    crate::netns::run_in(netns, move || {
        nftables::helper::apply_ruleset(&doc).map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(|e| e.to_string())
}

/// Delete table `family name` if it exists; returns whether it did.
pub(crate) fn delete_table(netns: Option<&Path>, family: &str, name: &str) -> Result<bool, String> {
    let (f, t) = (family.to_string(), name.to_string());
    let exists = crate::netns::run_in(netns, move || {
        Ok(std::process::Command::new("nft")
            .args(["list", "table", &f, &t])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?
            .success())
    })
    .map_err(|e| format!("nft: {e}"))?;
    if exists {
        apply(
            netns,
            json!({"nftables": [{"delete": {"table": {"family": family, "name": name}}}]}),
        )?;
    }
    Ok(exists)
}
