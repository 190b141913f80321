//! `ttm formats`: the option layouts `--format` accepts, with their bytes.

use std::process::ExitCode;

use anyhow::Result;

/// Prints each preset's layouts and the custom form.
pub fn run() -> Result<ExitCode> {
    for preset in &ttm::formats::PRESETS {
        println!("{} — {}", preset.name, preset.about);
        for f in preset.formats {
            println!("    {}", ttm::formats::layout(f));
        }
        println!("    {}", ttm::formats::position_note(&preset.formats[0]));
    }
    println!("custom:KIND/LEN/v4|v6[/first|/last] — any other load balancer");
    println!("    [KIND][LEN][port:2][address:4 or 16][ignored: the rest of LEN]");
    println!(
        "    /first or /last: where the LB writes its option among those in the segment; \
         without it two options naming different clients give no record"
    );
    println!(
        "formats whose positions disagree (e.g. toa with kind200): no position is \
         trusted, as if unknown"
    );
    Ok(ExitCode::SUCCESS)
}
