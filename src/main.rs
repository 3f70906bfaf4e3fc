//! The `herald` binary: `serve` (default), `sandbox`, `keys`.

fn main() {
    println!("herald: skeleton");
}
