// libyaml's event API, used directly: Yams builds a richer tree (tags, styles, duplicate checks by hashing
// nodes) that costs seconds on a 100,000-device file; policy needs only strings, lists, mappings and lines.
// CYaml is the libyaml module that the Yams package builds and links.
import CYaml

/// A YAML node reduced to what policy files use, with the 1-based line it starts on.
enum YAMLNode: Sendable {
    case scalar(String, line: Int)
    case mapping([(key: YAMLNode, value: YAMLNode)], line: Int)
    case sequence([YAMLNode], line: Int)

    var line: Int {
        switch self {
        case .scalar(_, let line), .mapping(_, let line), .sequence(_, let line): return line
        }
    }

    var string: String? {
        if case .scalar(let s, _) = self { return s }
        return nil
    }
}

struct YAMLSyntaxError: Error, Sendable {
    var line: Int
    var problem: String
}

enum YAMLTree {
    /// The first document's root, or nil for an empty stream. Anchors and aliases are resolved.
    static func compose(_ text: String) throws(YAMLSyntaxError) -> YAMLNode? {
        guard !text.isEmpty else { return nil }  // libyaml would say the same: a stream without documents
        var text = text
        let result: Result<YAMLNode?, YAMLSyntaxError> = text.withUTF8 { buffer in
            if let node = BlockLayoutReader.compose(buffer) { return .success(node) }
            return composeWithLibYAML(buffer)
        }
        return try result.get()
    }

    /// `compose` through libyaml only (BlockLayoutReaderTests compare the two).
    static func composeWithLibYAML(_ text: String) throws(YAMLSyntaxError) -> YAMLNode? {
        guard !text.isEmpty else { return nil }
        var text = text
        return try text.withUTF8 { composeWithLibYAML($0) }.get()
    }

    private static func composeWithLibYAML(_ buffer: UnsafeBufferPointer<UInt8>) -> Result<YAMLNode?, YAMLSyntaxError> {
        // libyaml reads exactly `count` bytes, no terminating NUL needed.
        var reader = EventReader(buffer.baseAddress!, count: buffer.count)  // `!`: the caller returned early for an empty text
        defer { reader.close() }
        return Result { () throws(YAMLSyntaxError) -> YAMLNode? in try reader.document() }
    }
}

/// Pulls events from libyaml and builds nodes; must not outlive the input buffer.
private struct EventReader {
    /// On the heap: libyaml keeps a pointer to the parser inside it (string input), and a Swift struct may move.
    private let parser: UnsafeMutablePointer<yaml_parser_t>
    private var anchors: [String: YAMLNode] = [:]

    init(_ input: UnsafePointer<UInt8>, count: Int) {
        parser = .allocate(capacity: 1)
        parser.initialize(to: yaml_parser_t())
        yaml_parser_initialize(parser)
        yaml_parser_set_encoding(parser, YAML_UTF8_ENCODING)
        yaml_parser_set_input_string(parser, input, count)
    }

    func close() {
        yaml_parser_delete(parser)
        parser.deallocate()
    }

    mutating func document() throws(YAMLSyntaxError) -> YAMLNode? {
        var event = try next()  // stream start
        defer { yaml_event_delete(&event) }
        var root: YAMLNode?
        var documents = 0
        while true {
            var e = try next()
            let type = e.type
            let line = Int(e.start_mark.line) + 1
            yaml_event_delete(&e)
            switch type {
            case YAML_STREAM_END_EVENT:
                return root
            case YAML_DOCUMENT_START_EVENT:
                documents += 1
                if documents > 1 { throw YAMLSyntaxError(line: line, problem: "more than one YAML document ('---') in the file") }
                var first = try next()
                root = try node(&first)
                var end = try next()  // document end
                yaml_event_delete(&end)
            default:
                throw YAMLSyntaxError(line: line, problem: "unexpected YAML event")
            }
        }
    }

    private mutating func next() throws(YAMLSyntaxError) -> yaml_event_t {
        var event = yaml_event_t()
        guard yaml_parser_parse(parser, &event) == 1 else {
            let problem = parser.pointee.problem.map { String(cString: $0) } ?? "syntax error"
            let context = parser.pointee.context.map { " " + String(cString: $0) } ?? ""
            throw YAMLSyntaxError(line: Int(parser.pointee.problem_mark.line) + 1, problem: problem + context)
        }
        return event
    }

    /// Builds the node that starts with `event`, consuming its events; deletes `event`.
    private mutating func node(_ event: inout yaml_event_t) throws(YAMLSyntaxError) -> YAMLNode {
        let line = Int(event.start_mark.line) + 1
        switch event.type {
        case YAML_SCALAR_EVENT:
            let s = event.data.scalar
            let value = String(decoding: UnsafeBufferPointer(start: s.value, count: s.length), as: UTF8.self)
            let anchor = s.anchor.map { String(cString: $0) }
            yaml_event_delete(&event)
            let n = YAMLNode.scalar(value, line: line)
            if let anchor { anchors[anchor] = n }
            return n
        case YAML_ALIAS_EVENT:
            let name = event.data.alias.anchor.map { String(cString: $0) } ?? ""
            yaml_event_delete(&event)
            guard let n = anchors[name] else { throw YAMLSyntaxError(line: line, problem: "unknown alias *\(name)") }
            return n
        case YAML_SEQUENCE_START_EVENT:
            let anchor = event.data.sequence_start.anchor.map { String(cString: $0) }
            yaml_event_delete(&event)
            var items: [YAMLNode] = []
            while true {
                var e = try next()
                if e.type == YAML_SEQUENCE_END_EVENT { yaml_event_delete(&e); break }
                items.append(try node(&e))
            }
            let n = YAMLNode.sequence(items, line: line)
            if let anchor { anchors[anchor] = n }
            return n
        case YAML_MAPPING_START_EVENT:
            let anchor = event.data.mapping_start.anchor.map { String(cString: $0) }
            yaml_event_delete(&event)
            var pairs: [(key: YAMLNode, value: YAMLNode)] = []
            while true {
                var e = try next()
                if e.type == YAML_MAPPING_END_EVENT { yaml_event_delete(&e); break }
                let key = try node(&e)
                var v = try next()
                pairs.append((key, try node(&v)))
            }
            let n = YAMLNode.mapping(pairs, line: line)
            if let anchor { anchors[anchor] = n }
            return n
        default:
            yaml_event_delete(&event)
            throw YAMLSyntaxError(line: line, problem: "unexpected YAML event")
        }
    }
}
