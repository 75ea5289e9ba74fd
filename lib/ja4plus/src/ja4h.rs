//! JA4H, the HTTP client fingerprint: one per request, from the request head alone
//! (FoxIO License 1.1).
//!
//! `JA4H = a_b_c_d`:
//! * `a` (12 characters): method code, version (`10`/`11`/`20`/`30`), `c`/`n` for a Cookie
//!   header, `r`/`n` for a Referer header, the number of other header fields (`%02d`, at most
//!   99), and four characters of the primary Accept-Language (`0000` without one);
//! * `b`: hash of the header names in wire order and as spelled on the wire, without Cookie
//!   and Referer;
//! * `c`: hash of the cookie names, sorted;
//! * `d`: hash of the cookie `name=value` strings, sorted by name.
//!
//! Choices where the references disagree (see the spec, §5), and why:
//! * HTTP/2 pseudo-header fields (`:method`, `:path`, ...) are not headers: they are neither
//!   counted nor hashed. That is what the Python and Wireshark references do and the HaIS
//!   answer key for HTTP/2; the FoxIO Rust tool counts them.
//! * Cookie and Referer are recognised case-insensitively (Rust reference).
//! * Method code: the first two characters of the method, lower-cased. This reproduces the
//!   nine codes the written method lists (`ge`, `he`, `op`, `tr`, `de`, `pu`, `po`, `pa`,
//!   `co` are each method's first two letters) and is the Python reference's rule for every
//!   other method (`PROPFIND` -> `pr`, `M-SEARCH` -> `m-`), so unknown methods still get a
//!   fingerprint instead of being dropped (Rust tool) or collapsed to `00` (Wireshark).
//!   Characters other than ASCII letters, digits and `-` print as `0`, which keeps `_` (the
//!   section separator) out of the string.
//! * Accept-Language: the value up to the first `,` or `;`, without whitespace and `-`,
//!   lower-cased, first four characters, right-padded with `0` (spec §5.3 recommendation;
//!   matches Python and Wireshark on every corpus request). Non-ASCII characters are dropped
//!   so `a` stays 12 bytes.
//! * Cookies: every Cookie field is split on `;` and trimmed (HTTP/2 clients may put one or
//!   several crumbs in each `cookie` field). A crumb without `=` is a name with no value and
//!   appears as just the name in `d`. Sorting is by (name, value), as the Rust reference
//!   sorts, so equal names are ordered by value.
//! * An empty section hashes to `000000000000` (also the header list of a request without
//!   headers, where Wireshark prints the hash of the empty string).
//! * Raw forms always have four sections (`..._Accept-Language__` without cookies), as the
//!   Wireshark reference prints them.

use hais_dissect::http1::{HttpRequest, HttpVersion};
use hais_ja4::hash12;

/// JA4H and its variants, named as the FoxIO Rust tool names its output keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ja4h {
    /// The fingerprint, cookies sorted, e.g. `ge11cr13enus_88d2d584d47f_0f2659b474bf_161698816dab`.
    pub ja4h: String,
    /// Raw form of [`Self::ja4h`]: `a_headers_cookie-names_cookie-pairs`, lists joined with `,`.
    pub ja4h_r: String,
    /// Hashed, with cookies in the order they were sent.
    pub ja4h_o: String,
    /// Raw form of [`Self::ja4h_o`].
    pub ja4h_ro: String,
}

/// Largest header count JA4H prints.
const MAX_COUNT: usize = 99;

/// Computes JA4H for one request (HTTP/1.x or HTTP/2).
pub fn ja4h(req: &HttpRequest) -> Ja4h {
    let mut has_cookie = false;
    let mut has_referer = false;
    let mut names: Vec<&str> = Vec::new();
    let mut language: Option<&[u8]> = None;
    let mut cookies: Vec<(String, String)> = Vec::new();
    for (name, value) in &req.headers {
        if name.starts_with(':') {
            continue;
        }
        if name.eq_ignore_ascii_case("cookie") {
            has_cookie = true;
            push_cookies(value, &mut cookies);
            continue;
        }
        if name.eq_ignore_ascii_case("referer") {
            has_referer = true;
            continue;
        }
        if language.is_none() && name.eq_ignore_ascii_case("accept-language") {
            language = Some(value);
        }
        names.push(name);
    }

    let mut a = String::with_capacity(12);
    a.push_str(&method_code(&req.method));
    a.push_str(version_code(req.version));
    a.push(if has_cookie { 'c' } else { 'n' });
    a.push(if has_referer { 'r' } else { 'n' });
    a.push_str(&format!("{:02}", names.len().min(MAX_COUNT)));
    a.push_str(&language.map_or_else(|| "0000".to_string(), language_code));

    let headers = names.join(",");
    let header_hash = hash12(&headers);

    let original_names = join_names(&cookies);
    let original_pairs = join_pairs(&cookies);
    // Stable sort by (name, value): the Rust reference sorts these tuples.
    let mut sorted = cookies;
    sorted.sort_by(|x, y| {
        x.0.cmp(&y.0)
            .then_with(|| cookie_value(x).cmp(cookie_value(y)))
    });
    let sorted_names = join_names(&sorted);
    let sorted_pairs = join_pairs(&sorted);

    Ja4h {
        ja4h: format!(
            "{a}_{header_hash}_{}_{}",
            hash12(&sorted_names),
            hash12(&sorted_pairs)
        ),
        ja4h_r: format!("{a}_{headers}_{sorted_names}_{sorted_pairs}"),
        ja4h_o: format!(
            "{a}_{header_hash}_{}_{}",
            hash12(&original_names),
            hash12(&original_pairs)
        ),
        ja4h_ro: format!("{a}_{headers}_{original_names}_{original_pairs}"),
    }
}

/// Two-character method code: the first two characters lower-cased (see the module
/// documentation for why), `0` for anything but ASCII letters, digits and `-`, padded with
/// `0` for one-letter methods.
pub fn method_code(method: &str) -> String {
    let mut chars = method.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' {
            c.to_ascii_lowercase()
        } else {
            '0'
        }
    });
    [chars.next().unwrap_or('0'), chars.next().unwrap_or('0')]
        .iter()
        .collect()
}

/// The two version digits.
pub fn version_code(version: HttpVersion) -> &'static str {
    match version {
        HttpVersion::Http10 => "10",
        HttpVersion::Http11 => "11",
        HttpVersion::Http2 => "20",
        HttpVersion::Http3 => "30",
    }
}

/// Four characters from an Accept-Language value: the first language tag (cut at `,` and
/// `;`), whitespace and `-` removed, lower-cased, truncated or right-padded with `0`.
pub fn language_code(value: &[u8]) -> String {
    let mut out: String = value
        .iter()
        .take_while(|b| **b != b',' && **b != b';')
        .filter(|b| b.is_ascii_graphic() && **b != b'-')
        .map(|b| char::from(b.to_ascii_lowercase()))
        .take(4)
        .collect();
    while out.len() < 4 {
        out.push('0');
    }
    out
}

/// Splits one Cookie field into (name, crumb) pairs: crumbs separated by `;`, trimmed, the
/// name being the text before the first `=` (or the whole crumb).
fn push_cookies(value: &[u8], out: &mut Vec<(String, String)>) {
    let text = String::from_utf8_lossy(value);
    for crumb in text.split(';').map(str::trim).filter(|c| !c.is_empty()) {
        let name = crumb.split_once('=').map_or(crumb, |(n, _)| n);
        out.push((name.to_string(), crumb.to_string()));
    }
}

/// The value part of a (name, crumb) pair, empty for a crumb without `=`.
fn cookie_value(pair: &(String, String)) -> &str {
    pair.1.split_once('=').map_or("", |(_, v)| v)
}

fn join_names(cookies: &[(String, String)]) -> String {
    cookies
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn join_pairs(cookies: &[(String, String)]) -> String {
    cookies
        .iter()
        .map(|(_, c)| c.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hais_dissect::http1::parse_request_head;

    fn parse(head: &[u8]) -> HttpRequest {
        parse_request_head(head).unwrap().unwrap().0
    }

    /// The request behind FoxIO's own JA4H unit test (a CNN page load with two duplicated
    /// Sec-Fetch headers, giving 13 counted headers).
    const CNN: &str = concat!(
        "GET / HTTP/1.1\r\n",
        "Host: www.cnn.com\r\n",
        "Cookie: FastAB=0=6859,1=8174,2=4183,3=3319,4=3917,5=2557,6=4259,7=6070,8=0804,",
        "9=6453,10=1942,11=4435,12=4143,13=9445,14=6957,15=8682,16=1885,17=1825,18=3760,",
        "19=0929; sato=1; countryCode=US; stateCode=VA; ",
        "geoData=purcellville|VA|20132|US|NA|-400|broadband|39.160|-77.700|511; ",
        "usprivacy=1---; umto=1; ",
        "_dd_s=logs=1&id=b5c2d770-eaba-4847-8202-390c4552ff9a&created=1686159462724",
        "&expire=1686160422726\r\n",
        "Sec-Ch-Ua: \r\n",
        "Sec-Ch-Ua-Mobile: ?0\r\n",
        "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 ",
        "(KHTML, like Gecko) Chrome/114.0.5735.110 Safari/537.36\r\n",
        "Sec-Ch-Ua-Platform: \"\"\r\n",
        "Accept: */*\r\n",
        "Sec-Fetch-Site: same-origin\r\n",
        "Sec-Fetch-Mode: cors\r\n",
        "Sec-Fetch-Dest: empty\r\n",
        "Sec-Fetch-Mode: cors\r\n",
        "Sec-Fetch-Dest: empty\r\n",
        "Referer: https://www.cnn.com/\r\n",
        "Accept-Encoding: gzip, deflate\r\n",
        "Accept-Language: en-US,en;q=0.9\r\n",
        "\r\n",
    );

    #[test]
    fn foxio_reference_vector() {
        let fp = ja4h(&parse(CNN.as_bytes()));
        assert_eq!(
            fp.ja4h,
            "ge11cr13enus_88d2d584d47f_0f2659b474bf_161698816dab"
        );
        assert!(fp.ja4h_r.starts_with(
            "ge11cr13enus_Host,Sec-Ch-Ua,Sec-Ch-Ua-Mobile,User-Agent,Sec-Ch-Ua-Platform,Accept,\
             Sec-Fetch-Site,Sec-Fetch-Mode,Sec-Fetch-Dest,Sec-Fetch-Mode,Sec-Fetch-Dest,\
             Accept-Encoding,Accept-Language_FastAB,_dd_s,countryCode,geoData,sato,stateCode,\
             umto,usprivacy_FastAB=0=6859,"
        ));
        // Original order: FastAB first, then as sent.
        assert!(
            fp.ja4h_ro
                .contains("_FastAB,sato,countryCode,stateCode,geoData,usprivacy,umto,_dd_s_")
        );
        assert_eq!(&fp.ja4h_o[..25], &fp.ja4h[..25]);
        assert_ne!(fp.ja4h_o, fp.ja4h);
    }

    #[test]
    fn spec_header_example() {
        // Spec §5: this header list hashes to 974ebe531c03.
        let head = "GET / HTTP/1.1\r\nHost: a\r\nSec-Ch-Ua: b\r\nSec-Ch-Ua-Mobile: ?0\r\n\
                    User-Agent: c\r\nSec-Ch-Ua-Platform: d\r\nAccept: */*\r\n\
                    Sec-Fetch-Site: e\r\nSec-Fetch-Mode: f\r\nSec-Fetch-Dest: g\r\n\
                    Accept-Encoding: h\r\nAccept-Language: en-US,en;q=0.9\r\n\
                    Cookie: 1P_JAR=1; AEC=2; DV=3; NID=4; OGPC=5\r\nReferer: x\r\n\r\n";
        let fp = ja4h(&parse(head.as_bytes()));
        assert_eq!(&fp.ja4h[..39], "ge11cr11enus_974ebe531c03_21864220ae3d_");
    }

    #[test]
    fn empty_user_agent_over_bare_lf() {
        // pcap/http-empty-useragent.pcap; all three references agree.
        let fp = ja4h(&parse(b"GET / HTTP/1.0\nUser-Agent:\n\n"));
        assert_eq!(
            fp.ja4h,
            "ge10nn010000_b8bcd45ac095_000000000000_000000000000"
        );
        assert_eq!(fp.ja4h_r, "ge10nn010000_User-Agent__");
        assert_eq!(fp.ja4h_ro, fp.ja4h_r);
        assert_eq!(fp.ja4h_o, fp.ja4h);
    }

    #[test]
    fn cookie_name_prefix_sorts_by_name() {
        // pcap/single-packets.pcap frame 8: `visitor_id413862` must sort before
        // `visitor_id413862-hash` (sorting whole `name=value` strings gives the opposite).
        let head = concat!(
            "GET /analytics?conly=true&visitor_id=286585660 HTTP/1.1\r\n",
            "Accept: application/javascript, */*;q=0.8\r\n",
            "Referer: http://www.sustainablesites.org/\r\n",
            "Accept-Language: en-US\r\n",
            "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 ",
            "(KHTML, like Gecko) Chrome/42.0.2311.135 Safari/537.36 Edge/12.10240\r\n",
            "Accept-Encoding: gzip, deflate\r\n",
            "Host: build.usgbc.org\r\n",
            "Connection: Keep-Alive\r\n",
            "Cookie: visitor_id413862=286585660; visitor_id413862-hash=1f00bdb076b5fb707c70254",
            "849819ec1797d3e27cef91a61a9488cb7ca0ebf77f226caa4075591b2591bf9a1ccdf29432c67379b; ",
            "pardot=tee2foreb3fefpgvk8u1056vt3\r\n\r\n",
        );
        let fp = ja4h(&parse(head.as_bytes()));
        assert_eq!(
            fp.ja4h,
            "ge11cr06enus_8c2f9ef95269_d23bf79698dc_69e42fa741fe"
        );
        assert!(
            fp.ja4h_r
                .contains("_pardot,visitor_id413862,visitor_id413862-hash_pardot=")
        );
    }

    #[test]
    fn post_with_two_cookies_raw_forms() {
        // pcap/single-packets.pcap frame 4; raw strings as the Wireshark reference prints.
        let head = concat!(
            "POST /RT HTTP/1.1\r\n",
            "Accept: text/html, application/xhtml+xml, image/jxr, */*\r\n",
            "Referer: http://www.shangri-la.com/\r\n",
            "Accept-Language: en-US\r\n",
            "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 ",
            "(KHTML, like Gecko) Chrome/42.0.2311.135 Safari/537.36 Edge/12.10240\r\n",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            "Accept-Encoding: gzip, deflate\r\n",
            "Host: www.tamgrt.com\r\n",
            "Content-Length: 43\r\n",
            "Connection: Keep-Alive\r\n",
            "Cache-Control: no-cache\r\n",
            "Cookie: RT=%1%enc%3Atg%2FlU7zufFPUle8wLxga3M9JuU9Wqi9L5JCsWOqGF5aUK4qCG413AHFq",
            "%2BvIG1jhcNox8JbUSTxk%3D; ServerPool=R\r\n\r\n",
        );
        let fp = ja4h(&parse(head.as_bytes()));
        assert_eq!(
            fp.ja4h,
            "po11cr09enus_130d8cd1913c_f81c0e5c6793_90689f748de6"
        );
        assert_eq!(
            fp.ja4h_r,
            "po11cr09enus_Accept,Accept-Language,User-Agent,Content-Type,Accept-Encoding,Host,\
             Content-Length,Connection,Cache-Control_RT,ServerPool_RT=%1%enc%3Atg%2FlU7zufFPUle8\
             wLxga3M9JuU9Wqi9L5JCsWOqGF5aUK4qCG413AHFq%2BvIG1jhcNox8JbUSTxk%3D,ServerPool=R"
        );
    }

    #[test]
    fn curl_with_cookies_and_language_list() {
        // pcap/http1-with-cookies.pcapng; raw original order as the Python reference prints.
        let head = b"GET / HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: curl/8.1.2\r\n\
                     Accept: */*\r\nReferer: https://fake.example\r\n\
                     Cookie: yummy_cookie=choco; tasty_cookie=strawberry\r\n\
                     Accept-Language: da, en-GB;q=0.8, en;q=0.7\r\n\r\n";
        let fp = ja4h(&parse(head));
        assert_eq!(
            fp.ja4h,
            "ge11cr04da00_8ddaef5d77af_280f366eaa04_c2fb0fe53442"
        );
        assert_eq!(
            fp.ja4h_ro,
            "ge11cr04da00_Host,User-Agent,Accept,Accept-Language_yummy_cookie,tasty_cookie_\
             yummy_cookie=choco,tasty_cookie=strawberry"
        );
        assert_eq!(
            fp.ja4h_r,
            "ge11cr04da00_Host,User-Agent,Accept,Accept-Language_tasty_cookie,yummy_cookie_\
             tasty_cookie=strawberry,yummy_cookie=choco"
        );
    }

    fn h2(fields: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            version: HttpVersion::Http2,
            headers: fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn http2_pseudo_headers_are_not_headers() {
        // Chrome over HTTP/2 in pcap/chrome-cloudflare-quic-with-secrets.pcapng: Python and
        // Wireshark give ge20nn12enus_60f823d07c94 (the Rust tool counts the 4 pseudo-headers).
        let req = h2(&[
            (":method", "GET"),
            (":authority", "cloudflare-quic.com"),
            (":scheme", "https"),
            (":path", "/"),
            ("sec-ch-ua", "\"Chromium\";v=\"118\""),
            ("sec-ch-ua-mobile", "?0"),
            ("sec-ch-ua-platform", "\"macOS\""),
            ("upgrade-insecure-requests", "1"),
            ("user-agent", "Mozilla/5.0"),
            ("accept", "text/html"),
            ("sec-fetch-site", "none"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-user", "?1"),
            ("sec-fetch-dest", "document"),
            ("accept-encoding", "gzip, deflate, br"),
            ("accept-language", "en-US,en;q=0.9"),
        ]);
        let fp = ja4h(&req);
        assert_eq!(
            fp.ja4h,
            "ge20nn12enus_60f823d07c94_000000000000_000000000000"
        );
        assert!(fp.ja4h_r.ends_with("accept-encoding,accept-language__"));
    }

    #[test]
    fn http2_cookie_crumbs_in_separate_and_joined_fields() {
        let split = h2(&[
            (":method", "GET"),
            ("cookie", "b=2"),
            ("user-agent", "x"),
            ("cookie", "a=1"),
            ("cookie", "c=3; d=4"),
            ("referer", "https://r/"),
        ]);
        let joined = h2(&[
            (":method", "GET"),
            ("cookie", "b=2; a=1; c=3; d=4"),
            ("user-agent", "x"),
            ("referer", "https://r/"),
        ]);
        let (s, j) = (ja4h(&split), ja4h(&joined));
        assert_eq!(s, j);
        assert_eq!(s.ja4h_r, "ge20cr010000_user-agent_a,b,c,d_a=1,b=2,c=3,d=4");
        assert_eq!(s.ja4h_ro, "ge20cr010000_user-agent_b,a,c,d_b=2,a=1,c=3,d=4");
    }

    #[test]
    fn equal_cookie_names_sort_by_value_and_bare_names_are_kept() {
        let req = parse(b"GET / HTTP/1.1\r\nCookie: z=2; flag; z=1;; a=\r\n\r\n");
        let fp = ja4h(&req);
        assert_eq!(fp.ja4h_r, "ge11cn000000__a,flag,z,z_a=,flag,z=1,z=2");
        assert_eq!(
            fp.ja4h,
            format!(
                "ge11cn000000_000000000000_{}_{}",
                hash12("a,flag,z,z"),
                hash12("a=,flag,z=1,z=2")
            )
        );
    }

    #[test]
    fn cookie_and_referer_match_any_case() {
        let fp = ja4h(&parse(
            b"GET / HTTP/1.1\r\nCOOKIE: a=1\r\nreferer: x\r\nHost: h\r\n\r\n",
        ));
        assert_eq!(&fp.ja4h[..12], "ge11cr010000");
        assert!(fp.ja4h_r.starts_with("ge11cr010000_Host_a_a=1"));
    }

    #[test]
    fn no_headers_at_all() {
        // pcap/gre-erspan-vxlan.pcap frame 4: the written rule gives all-zero hashes.
        let fp = ja4h(&parse(b"GET /Hello Arkime HTTP/1.0\r\n\r\n"));
        assert_eq!(
            fp.ja4h,
            "ge10nn000000_000000000000_000000000000_000000000000"
        );
        assert_eq!(fp.ja4h_r, "ge10nn000000___");
    }

    #[test]
    fn method_codes() {
        for (m, code) in [
            ("GET", "ge"),
            ("HEAD", "he"),
            ("OPTIONS", "op"),
            ("TRACE", "tr"),
            ("DELETE", "de"),
            ("PUT", "pu"),
            ("POST", "po"),
            ("PATCH", "pa"),
            ("CONNECT", "co"),
            ("PROPFIND", "pr"),
            ("M-SEARCH", "m-"),
            ("get", "ge"),
            ("X", "x0"),
            ("A_B", "a0"),
            ("", "00"),
            ("Ωx", "0x"),
        ] {
            assert_eq!(method_code(m), code, "{m}");
        }
        let fp = ja4h(&parse(
            b"PROPFIND /d HTTP/1.1\r\nHost: h\r\nDepth: 1\r\n\r\n",
        ));
        assert!(fp.ja4h.starts_with("pr11nn020000_"));
    }

    #[test]
    fn language_codes() {
        for (v, code) in [
            ("en-US,en;q=0.9", "enus"),
            ("da, en-GB;q=0.8", "da00"),
            ("ru-RU", "ruru"),
            ("en;q=0.9", "en00"),
            ("*", "*000"),
            (" en-US", "enus"),
            ("zh-Hant-TW", "zhha"),
            ("", "0000"),
            ("DE", "de00"),
            ("fr\u{e9}-CH", "frch"),
        ] {
            assert_eq!(language_code(v.as_bytes()), code, "{v:?}");
        }
        // Only the first Accept-Language field counts.
        let fp = ja4h(&parse(
            b"GET / HTTP/1.1\r\nAccept-Language: fr\r\naccept-language: de\r\n\r\n",
        ));
        assert_eq!(&fp.ja4h[..12], "ge11nn02fr00");
    }

    #[test]
    fn header_count_is_capped_at_99() {
        let mut head = String::from("GET / HTTP/1.1\r\n");
        for i in 0..120 {
            head.push_str(&format!("X-{i}: v\r\n"));
        }
        head.push_str("\r\n");
        let fp = ja4h(&parse(head.as_bytes()));
        assert_eq!(&fp.ja4h[..12], "ge11nn990000");
        assert!(fp.ja4h_r.contains(",X-119_"));
    }

    #[test]
    fn odd_inputs_do_not_panic_and_keep_shape() {
        let req = HttpRequest {
            method: "\u{1F600}".into(),
            version: HttpVersion::Http3,
            headers: vec![
                ("Cookie".into(), vec![0xff, b'=', 0xfe, b';', b';']),
                ("Accept-Language".into(), vec![0xc3, 0xa9, b'_', b'x']),
                (String::new(), Vec::new()),
            ],
        };
        let fp = ja4h(&req);
        assert_eq!(fp.ja4h.len(), 12 + 3 * 13);
        assert!(fp.ja4h.starts_with("0030cn02_x00_"), "{}", fp.ja4h);
    }
}
