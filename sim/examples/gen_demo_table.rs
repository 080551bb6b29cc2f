//! Generates the compact kernel table of the built-in demo from the real 20348 table:
//! `cargo run -p kdnet-sim --example gen_demo_table -- <ntkrnlmp 20348 table> <output>`.
//! It builds every scenario with the full table while recording which types, fields, enums and
//! symbols are used, adds what the analysis commands read, and writes exactly that subset.
//! Run through `scripts/gen-builtin-tables.sh`; never edit the output by hand.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (args.get(1), args.get(2)) else {
        eprintln!(
            "usage: gen_demo_table <C2EADB24A615E9472CE47C8ADD31F130-1.json.xz> <output.json>"
        );
        std::process::exit(3);
    };
    match kdnet_sim::layout::demo_table_json(std::path::Path::new(input)) {
        Ok(json) => {
            let tmp = format!("{output}.tmp");
            if let Err(e) = std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, output)) {
                eprintln!("cannot write {output}: {e}");
                std::process::exit(1);
            }
            println!("wrote {output}");
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
