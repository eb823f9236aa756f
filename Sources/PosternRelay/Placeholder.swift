// PosternRelay
