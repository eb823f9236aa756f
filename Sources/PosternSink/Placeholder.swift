// PosternSink
