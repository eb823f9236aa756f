// PosternTestSupport
