//! Generates the built-in NDIS layout from the real ndis.pdb:
//! `cargo run -p kdnet-sim --example gen_ndis_table -- <ndis.pdb> <output>`. Run through
//! `scripts/gen-builtin-tables.sh`; never edit the output by hand.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: gen_ndis_table <ndis.pdb> <output.json>");
        std::process::exit(3);
    };
    match kdnet_sim::layout::ndis_table_json(std::path::Path::new(input)) {
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
