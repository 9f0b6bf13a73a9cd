//! Certificates for the TLS tests (rcgen): a private CA, leaves it signs (valid, expired,
//! for another host), and a `wss://` echo server presenting a given leaf.

#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tidewire::ServerBuilder;
use tokio::net::TcpListener;

pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Tidewire test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names`, valid from `from` to `until` (years), signed by this CA: its
    /// certificate and key as PEM.
    pub fn leaf(&self, names: &[&str], from: i32, until: i32) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A `wss://` echo server presenting `cert_pem` (chain) and `key_pem`: its port.
pub async fn wss_server(cert_pem: &str, key_pem: &str) -> u16 {
    let config = tidewire::server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let acceptor = tidewire::tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut ws) = ServerBuilder::new().accept(tls).await {
                    while let Some(Ok(m)) = ws.recv().await {
                        if m.is_data() && ws.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    port
}
