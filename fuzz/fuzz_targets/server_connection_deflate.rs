#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tidewire_proto::fuzzing::server_connection_deflate(data));
