//! Printable labels: an SVG per device with a QR code and the ID and claim code in text, and an
//! HTML sheet for a whole batch.
//!
//! QR payload format: `CLM1:<THINGNAME>:<claim code, 16 characters, no dashes>`, or
//! `CLM1:<THINGNAME>` when the batch has no claim codes. Portals scan this, split on `:` and
//! lowercase the ThingName. Everything is upper case so that the QR code uses alphanumeric mode:
//! a smaller symbol (version 3 instead of 4) that prints and scans better.

use std::fmt::Write;

use anyhow::Result;
use qrcode::{Color, EcLevel};

use claimlink_staging::claim_code::ClaimCode;

/// The QR payload for a device.
pub(crate) fn qr_payload(thing: &str, code: Option<&ClaimCode>) -> String {
    let thing = thing.to_ascii_uppercase();
    match code {
        Some(c) => format!("CLM1:{thing}:{}", c.expose_canonical()),
        None => format!("CLM1:{thing}"),
    }
}

/// A QR symbol: its modules row by row (`true` = dark) and its width.
struct Symbol {
    dark: Vec<bool>,
    width: usize,
}

/// Widest symbol the packed penalty scorer handles (version 11).
const MAX_WIDTH: usize = 61;

/// Encodes `payload` at error correction level M, choosing the mask with the lowest ISO/IEC
/// 18004 section 7.8.3 penalty, as `qrcode` does, but scored on a plain module array: the
/// crate's scorer took a third of the time of issuing a device.
fn encode(payload: &[u8]) -> Result<Symbol> {
    use qrcode::canvas::{Canvas, MaskPattern};
    let bits = qrcode::bits::encode_auto(payload, EcLevel::M)?;
    let version = bits.version();
    if !matches!(version, qrcode::Version::Normal(v) if 4 * v + 17 <= MAX_WIDTH as i16) {
        anyhow::bail!("label payload needs a QR symbol wider than {MAX_WIDTH} modules");
    }
    let (data, ec) = qrcode::ec::construct_codewords(&bits.into_bytes(), version, EcLevel::M)?;
    let mut canvas = Canvas::new(version, EcLevel::M);
    canvas.draw_all_functional_patterns();
    canvas.draw_data(&data, &ec);
    let masks = [
        MaskPattern::Checkerboard,
        MaskPattern::HorizontalLines,
        MaskPattern::VerticalLines,
        MaskPattern::DiagonalLines,
        MaskPattern::LargeCheckerboard,
        MaskPattern::Fields,
        MaskPattern::Diamonds,
        MaskPattern::Meadow,
    ];
    let best = masks
        .into_iter()
        .map(|mask| {
            let mut c = canvas.clone();
            c.apply_mask(mask);
            let dark: Vec<bool> = c.into_colors().into_iter().map(|m| m == Color::Dark).collect();
            let width = dark.len().isqrt();
            let symbol = Symbol { dark, width };
            (penalty(&symbol), symbol)
        })
        .min_by_key(|(score, _)| *score)
        .ok_or_else(|| anyhow::anyhow!("no QR mask"))?;
    Ok(best.1)
}

/// The mask penalty N1 + N2 + N3 + N4 of ISO/IEC 18004:2015 section 7.8.3, on rows and columns
/// packed into bit masks (symbols up to version 11, 61 modules wide; labels use version 3 or 4).
fn penalty(s: &Symbol) -> usize {
    let w = s.width;
    let mut rows = vec![0u64; w];
    let mut cols = vec![0u64; w];
    for (y, line) in s.dark.chunks(w).enumerate() {
        for (x, d) in line.iter().enumerate() {
            rows[y] |= u64::from(*d) << x;
            cols[x] |= u64::from(*d) << y;
        }
    }
    let lines: usize = rows.iter().chain(&cols).map(|l| line_penalty(*l, w)).sum();
    let inner = (1u64 << (w - 1)) - 1; // pairs (x, x+1) for x in 0..w-1
    let blocks: usize = rows
        .windows(2)
        .map(|ab| {
            let (a, b) = (ab[0], ab[1]);
            let same = !(a ^ (a >> 1)) & !(b ^ (b >> 1)) & !(a ^ b) & inner;
            same.count_ones() as usize * 3 // N2: 2x2 blocks of one colour
        })
        .sum();
    let dark: usize = rows.iter().map(|r| r.count_ones() as usize).sum();
    let percent = dark * 100 / (w * w).max(1);
    lines + blocks + 10 * (percent.abs_diff(50) / 5) // N4: dark proportion away from 50 %
}

/// N1 (3 + (length - 5) for each run of five or more modules of one colour) and N3 (40 for each
/// 1:1:3:1:1 finder-like pattern with four light modules on one side; the quiet zone outside
/// the symbol counts as light) of one row or column of `w` modules, bit x = module x.
fn line_penalty(line: u64, w: usize) -> usize {
    const FINDER_THEN_LIGHT: u128 = 0b000_0101_1101; // bit order: module x at bit x
    const LIGHT_THEN_FINDER: u128 = 0b101_1101_0000;
    // Run boundaries: bit x set where module x differs from module x + 1, plus the line's end.
    let mut ends = ((line ^ (line >> 1)) & ((1u64 << (w - 1)) - 1)) | (1u64 << (w - 1));
    let (mut score, mut start) = (0, 0);
    while ends != 0 {
        let end = ends.trailing_zeros() as usize;
        let run = end + 1 - start;
        score += if run >= 5 { run - 2 } else { 0 };
        start = end + 1;
        ends &= ends - 1;
    }
    let padded = u128::from(line) << 4; // four light modules before, and after (zeros above)
    let finders = (0..=w + 8 - 11)
        .filter(|k| matches!((padded >> k) & 0x7ff, FINDER_THEN_LIGHT | LIGHT_THEN_FINDER))
        .count();
    score + 40 * finders
}

/// The QR symbol as one SVG path of horizontal runs (far fewer bytes than a square per module),
/// in a `size` x `size` box at (`x`, `y`) including a four-module quiet zone.
fn qr_svg(symbol: &Symbol, x: u32, y: u32, size: u32) -> String {
    let width = symbol.width;
    let mut d = String::with_capacity(width * width);
    for (row, line) in symbol.dark.chunks(width).enumerate() {
        let mut col = 0;
        while col < width {
            if line[col] {
                let run = line[col..].iter().take_while(|d| **d).count();
                let _ = write!(d, "M{} {}h{run}v1h-{run}z", col + 4, row + 4);
                col += run;
            } else {
                col += 1;
            }
        }
    }
    let modules = width + 8;
    format!(
        r#"<svg x="{x}" y="{y}" width="{size}" height="{size}" viewBox="0 0 {modules} {modules}" shape-rendering="crispEdges"><path d="{d}"/></svg>"#
    )
}

/// The claim code printed on a label made by [`svg`] (dashes removed), for simulators that
/// "read" labels as a person would.
pub(crate) fn claim_code_of(svg: &str) -> Option<String> {
    let after = svg.split_once(">Claim code</text>")?.1;
    let lines: Vec<&str> = after
        .split("font-weight=\"bold\">")
        .skip(1)
        .filter_map(|s| s.split_once("</text>").map(|(t, _)| t))
        .take(2)
        .collect();
    (lines.len() == 2).then(|| format!("{}{}", lines[0], lines[1]).replace('-', ""))
}

/// A 62 mm x 29 mm label as SVG.
pub(crate) fn svg(thing: &str, code: Option<&ClaimCode>, algorithm: &str) -> Result<String> {
    let inner = qr_svg(&encode(qr_payload(thing, code).as_bytes())?, 4, 4, 104);
    let code_line = code
        .map(|c| {
            // Two groups per line: 19 characters in one line do not fit at a typable size.
            let grouped = c.expose_grouped();
            let (first, second) = grouped.split_at(grouped.len().min(10));
            format!(
                r#"<text x="114" y="66" font-size="11">Claim code</text><text x="114" y="84" font-size="14" font-weight="bold">{}</text><text x="114" y="102" font-size="14" font-weight="bold">{second}</text>"#,
                first.trim_end_matches('-')
            )
        })
        .unwrap_or_default();
    Ok(format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="62mm" height="29mm" viewBox="0 0 234 112" font-family="monospace">
<rect width="234" height="112" fill="white"/>
{inner}
<text x="114" y="22" font-size="11">Device ID</text>
<text x="230" y="22" font-size="9" text-anchor="end">{algorithm}</text>
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

#[cfg(test)]
mod tests {
    use super::*;
    use qrcode::QrCode;

    /// Renders the symbol at 4 px per module with a quiet zone and decodes it with rqrr.
    fn decode(s: &Symbol) -> String {
        let px = 4;
        let side = (s.width + 8) * px;
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| {
            let (mx, my) = ((x / px).wrapping_sub(4), (y / px).wrapping_sub(4));
            let dark = mx < s.width && my < s.width && s.dark[my * s.width + mx];
            if dark { 0 } else { 255 }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1);
        grids[0].decode().unwrap().1
    }

    #[test]
    fn the_printed_claim_code_reads_back_from_the_label() {
        let code = ClaimCode::parse("7KQ2-M9XD-4HPT-ZC3W").unwrap();
        let thing = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            claim_code_of(&svg(thing, Some(&code), "SM2").unwrap()).as_deref(),
            Some("7KQ2M9XD4HPTZC3W")
        );
        assert_eq!(claim_code_of(&svg(thing, None, "P-256").unwrap()), None);
    }

    #[test]
    fn payload_is_alphanumeric_and_the_symbol_round_trips_through_its_modules() {
        let code = ClaimCode::parse("7KQ2-M9XD-4HPT-ZC3W").unwrap();
        let thing = "0123456789abcdef0123456789abcdef";
        let payload = qr_payload(thing, Some(&code));
        assert_eq!(payload, "CLM1:0123456789ABCDEF0123456789ABCDEF:7KQ2M9XD4HPTZC3W");
        let qr = QrCode::with_error_correction_level(payload.as_bytes(), EcLevel::M).unwrap();
        assert_eq!(qr.version(), qrcode::Version::Normal(3), "alphanumeric mode keeps it small");
        // Our symbol decodes to the payload with an independent decoder (rqrr), and our mask
        // choice scores no worse than the crate's own under the ISO penalty.
        let ours = encode(payload.as_bytes()).unwrap();
        assert_eq!(decode(&ours), payload);
        let theirs =
            Symbol { dark: qr.to_colors().iter().map(|c| *c == Color::Dark).collect(), width: qr.width() };
        assert!(penalty(&ours) <= penalty(&theirs));
        // The penalty of a known pattern: a 5-run scores 3, a lone finder pattern 40 (x2: the
        // light padding matches on both sides), and nothing else.
        assert_eq!(line_penalty(0b11111, 5), 3);
        assert_eq!(line_penalty(0b1011101, 7), 80);
        assert_eq!(line_penalty(0b101_1101_0000, 11), 80);
        assert_eq!(line_penalty(0b0101010, 7), 0);
        assert_eq!(line_penalty(0b1111100000011, 13), 3 + 4);
        let no_code = encode(qr_payload(thing, None).as_bytes()).unwrap();
        assert_eq!(decode(&no_code), "CLM1:0123456789ABCDEF0123456789ABCDEF");
        // Every dark module is covered by exactly one run of the path.
        let svg = qr_svg(&ours, 0, 0, 100);
        let dark = ours.dark.iter().filter(|d| **d).count();
        let covered: usize =
            svg.split('h').skip(1).filter_map(|s| s.split('v').next()?.parse::<usize>().ok()).sum();
        assert_eq!(covered, dark);
        let label = super::svg(thing, Some(&code), "SM2").unwrap();
        assert!(
            label.contains(">7KQ2-M9XD<")
                && label.contains(">4HPT-ZC3W<")
                && label.contains("0123456789abcdef")
        );
    }
}
