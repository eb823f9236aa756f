import Foundation
import PosternCore
import PosternGateway
import PosternPolicy
import PosternRegistration
import PosternTestSupport
import XCTest

final class RegistrationConfigurationTests: XCTestCase {
    func yaml(_ registration: String, certs: String) -> String {
        """
        policies: .
        tls: { certificate: \(certs)/server.pem, key: \(certs)/server.key }
        listeners:
          - { name: device, kind: device, listen: "127.0.0.1:0" }
        directory:
          uris: [ldaps://127.0.0.1:1]
          bind-dn: cn=postern,ou=services,dc=example,dc=edu
          bind-password-env: UNUSED
          search-base: ou=people,dc=example,dc=edu
          group-attribute: memberOf
        \(registration)
        """
    }

    func parse(_ registration: String) throws -> Result<RegistrationConfiguration?, ConfigErrors> {
        let certs = try Repo.temporaryDirectory("postern-reg-certs")
        defer { try? FileManager.default.removeItem(at: certs) }
        try TestSlapd.makeDevCertificates(in: certs.path)
        let text = yaml(registration, certs: certs.path)
        let file = "/etc/postern/postern.yaml"
        do {
            return .success(try GatewayConfiguration.parse(text, file: file).registration)
        } catch {
            return .failure(error)
        }
    }

    func testSectionIsParsedWithTheGatewaysTLSByDefault() throws {
        let configuration = try XCTUnwrap(try parse("""
            registration:
              listen: 127.0.0.1:9443
              admin-groups: [postern-admins]
              department-groups: { it: [dept-it], chem: "cn=dept-chem,ou=groups,dc=example,dc=edu" }
              campus-ranges: [10.0.0.0/8, "2001:db8::/32"]
              state: ../var/registration
              session-minutes: 30
            """).get())
        XCTAssertEqual(configuration.host, "127.0.0.1")
        XCTAssertEqual(configuration.port, 9443)
        XCTAssertTrue(configuration.tls.certificateChain.hasSuffix("/server.pem"))
        XCTAssertEqual(configuration.departmentGroups["chem"], ["cn=dept-chem,ou=groups,dc=example,dc=edu"])
        XCTAssertEqual(configuration.campusRanges.map(\.description), ["10.0.0.0/8", "2001:db8::/32"])
        XCTAssertEqual(configuration.stateDirectory, "/etc/var/registration")
        XCTAssertEqual(configuration.sessionLifetime, .seconds(1800))
        XCTAssertNil(try parse("").get(), "no section, no page")
    }

    func testErrorsNameTheLine() throws {
        guard case .failure(let errors) = try parse("""
            registration:
              listen: nowhere
              admin-groups: [postern-admins]
              campus-ranges: [10.0.0.0/33]
              state: s
              colour: blue
            """) else { return XCTFail("a broken section was accepted") }
        let text = errors.description
        XCTAssertTrue(text.contains("postern.yaml:12: registration.listen 'nowhere' is not HOST:PORT"), text)
        XCTAssertTrue(text.contains("postern.yaml:14: '10.0.0.0/33' is not an address or CIDR range"), text)
        XCTAssertTrue(text.contains("postern.yaml:16: registration: unknown key 'colour'"), text)
    }

    func testUniversityHelpAndContactHaveDemoDefaultsAndAreRead() throws {
        let defaults = try XCTUnwrap(try parse("""
            hostname: gw.example.edu
            registration:
              admin-groups: [postern-admins]
              campus-ranges: [10.0.0.0/8]
              state: s
            """).get())
        XCTAssertEqual(defaults.universityName, "Example University")
        XCTAssertEqual(defaults.helpURL, "/help")
        XCTAssertEqual(defaults.contact, "postmaster@gw.example.edu")
        XCTAssertEqual(defaults.adminRecipients, ["postmaster@gw.example.edu"])
        XCTAssertEqual(defaults.publicURL, "https://gw.example.edu:8443/")

        let set = try XCTUnwrap(try parse("""
            registration:
              admin-groups: [postern-admins]
              campus-ranges: [10.0.0.0/8]
              state: s
              university-name: Universität Beispiel
              help-url: https://it.example.edu/devices
              contact: devices@example.edu
              notify-admins: [a@example.edu, b@example.edu]
              public-url: https://devices.example.edu
            """).get())
        XCTAssertEqual(set.universityName, "Universität Beispiel")
        XCTAssertEqual(set.helpURL, "https://it.example.edu/devices")
        XCTAssertEqual(set.contact, "devices@example.edu")
        XCTAssertEqual(set.adminRecipients, ["a@example.edu", "b@example.edu"])
        XCTAssertEqual(set.publicURL, "https://devices.example.edu/")
    }

    func testUnusableUniversityHelpAndContactValuesNameTheLine() throws {
        guard case .failure(let errors) = try parse("""
            registration:
              admin-groups: [postern-admins]
              campus-ranges: [10.0.0.0/8]
              state: s
              university-name: ""
              help-url: "javascript:alert(1)"
              contact: nobody
              notify-admins: [ok@example.edu, "not an address"]
              public-url: http://devices.example.edu/
            """) else { return XCTFail("unusable values were accepted") }
        let text = errors.description
        XCTAssertTrue(text.contains("postern.yaml:15: registration.university-name must be 1 to 100 characters"), text)
        XCTAssertTrue(text.contains("postern.yaml:16: registration.help-url 'javascript:alert(1)' is not an http(s) URL or a path starting with /"), text)
        XCTAssertTrue(text.contains("postern.yaml:17: registration.contact 'nobody' is not a mail address"), text)
        XCTAssertTrue(text.contains("postern.yaml:18: registration.notify-admins 'not an address' is not a mail address"), text)
        XCTAssertTrue(text.contains("postern.yaml:19: registration.public-url 'http://devices.example.edu/' is not an https URL"), text)
    }
}
