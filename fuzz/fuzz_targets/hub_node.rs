//! The hub's node as a state machine: the fuzzer's bytes choose a sequence of subscribes
//! (resuming from the last position seen), publications, unsubscribes, disconnects, reads
//! by slow and fast clients and time passing, against the in-memory engine. The model
//! (`tidewire_hub::node::model`) checks exactly-once, in-order delivery, presence, and that
//! the broker is subscribed exactly to the channels with local subscribers.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tidewire_hub::node::model::run_bytes(data));
