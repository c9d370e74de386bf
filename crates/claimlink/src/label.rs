//! Printable labels: an SVG per device with a QR code and the ID and claim code in text, and an
//! HTML sheet for a whole batch.
//!
//! QR payload format: `CLM1:<ThingName>:<claim code, 16 characters, no dashes>`, or
//! `CLM1:<ThingName>` when the batch has no claim codes. Portals scan this and split on `:`.

use anyhow::Result;
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

use crate::claim_code::ClaimCode;

/// The QR payload for a device.
pub(crate) fn qr_payload(thing: &str, code: Option<&ClaimCode>) -> String {
    match code {
        Some(c) => format!("CLM1:{thing}:{}", c.expose_canonical()),
        None => format!("CLM1:{thing}"),
    }
}

/// A 62 mm x 29 mm label as SVG.
pub(crate) fn svg(thing: &str, code: Option<&ClaimCode>) -> Result<String> {
    let qr = QrCode::with_error_correction_level(qr_payload(thing, code).as_bytes(), EcLevel::M)?;
    let inner = qr.render::<svg::Color<'_>>().min_dimensions(200, 200).quiet_zone(true).build();
    let inner = inner.trim_start_matches(|c| c != '<').to_owned();
    let inner = match inner.find("<svg") {
        Some(i) => inner[i..].replacen("<svg", r#"<svg x="4" y="4" width="104" height="104""#, 1),
        None => inner,
    };
    let code_line = code
        .map(|c| format!(r#"<text x="114" y="70" font-size="11">Claim code</text><text x="114" y="86" font-size="14" font-weight="bold">{}</text>"#, c.expose_grouped()))
        .unwrap_or_default();
    Ok(format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="62mm" height="29mm" viewBox="0 0 234 112" font-family="monospace">
<rect width="234" height="112" fill="white"/>
{inner}
<text x="114" y="22" font-size="11">Device ID</text>
<text x="114" y="36" font-size="8.2">{}</text>
<text x="114" y="48" font-size="8.2">{}</text>
{code_line}
</svg>
"#,
        &thing[..thing.len().min(16)],
        &thing[thing.len().min(16)..]
    ))
}

/// The start of the printable HTML sheet (labels follow as `<img>` tags).
pub(crate) const SHEET_HEAD: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>claimlink device labels</title>
<style>
@page { size: A4; margin: 10mm; }
body { margin: 0; }
.sheet { display: grid; grid-template-columns: repeat(3, 62mm); gap: 4mm; }
.sheet img { width: 62mm; height: 29mm; border: 0.2mm dashed #bbb; break-inside: avoid; }
</style></head><body><div class="sheet">
"#;

/// The end of the sheet.
pub(crate) const SHEET_TAIL: &str = "</div></body></html>\n";
