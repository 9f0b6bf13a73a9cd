//! Run with: cargo run --release -p tidewire --example autobahn_client -- ws://127.0.0.1:9002 tidewire
//!
//! The client testee for the Autobahn TestSuite (`wstest -m fuzzingserver`): asks for the
//! number of cases, runs each one by echoing every text and binary message back, then asks
//! the fuzzing server to write its reports.

use tidewire::{ClientBuilder, Limits, Message, Options};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9002".into());
    let agent = args.next().unwrap_or_else(|| "tidewire".into());
    let base = base.trim_end_matches('/');

    let count = case_count(base).await?;
    println!("running {count} cases as agent {agent}");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(e) = run_case(&url).await {
            eprintln!("case {case}: {e}");
        }
    }
    let (mut ws, _) = tidewire::connect(&format!("{base}/updateReports?agent={agent}")).await?;
    let _ = ws.close(None).await;
    println!("reports updated");
    Ok(())
}

async fn case_count(base: &str) -> Result<u32, Box<dyn std::error::Error>> {
    let (mut ws, _) = tidewire::connect(&format!("{base}/getCaseCount")).await?;
    let mut count = None;
    while let Some(msg) = ws.recv().await {
        if let Message::Text(t) = msg? {
            count = Some(t.trim().parse::<u32>()?);
        }
    }
    count.ok_or_else(|| "no case count received".into())
}

async fn run_case(url: &str) -> tidewire::Result<()> {
    let limits = Limits::default()
        .max_frame_size(64 << 20)
        .max_message_size(64 << 20);
    let options = Options::default().limits(limits);
    // Offer permessage-deflate on every case: the 12.* and 13.* cases use it, the others
    // are answered without it.
    let offer = Some(tidewire::DeflateConfig::default().threshold(0));
    let (mut ws, _) = ClientBuilder::new(url)
        .options(options)
        .compression(offer)
        .connect()
        .await?;
    while let Some(msg) = ws.recv().await {
        let msg = msg?;
        if msg.is_data() {
            ws.feed(msg).await?;
        }
    }
    Ok(())
}
