//! A test PKI made in the test: a CA, the server's certificate, terminals'
//! client certificates, and a CA nobody trusts.

use std::path::Path;

pub struct Pki {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Another CA's certificate, trusted by nobody.
    pub stranger: std::path::PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    /// A terminal's client certificate naming `mac` (as its common name),
    /// signed by the test CA; `expired` ones ended in 2021.
    pub fn client(
        &self,
        dir: &Path,
        mac: &str,
        expired: bool,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, mac);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("client cert");
        let stem = mac.replace(':', "");
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("cert");
        std::fs::write(&k, key.serialize_pem()).expect("key");
        (c, k)
    }
}

pub fn make_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca = |cn: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.self_signed(&key).expect("ca");
        (cert, key)
    };
    let (ca_cert, ca_key) = ca("voi test CA");
    let (other, _) = ca("someone else's CA");
    let srv_key = KeyPair::generate().expect("key");
    let srv = CertificateParams::new(vec!["voi-server.test".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&srv_key, &ca_cert, &ca_key)
        .expect("server cert");
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        stranger: dir.join("other-ca.pem"),
        ca_cert,
        ca_key,
    };
    std::fs::write(&pki.ca, pki.ca_cert.pem()).expect("ca");
    std::fs::write(&pki.cert, srv.pem()).expect("cert");
    std::fs::write(&pki.key, srv_key.serialize_pem()).expect("key");
    std::fs::write(&pki.stranger, other.pem()).expect("other");
    pki
}
