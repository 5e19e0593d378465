-- One burst of orders: :n INSERTs, each in its own transaction (psql
-- autocommit; \gexec sends every generated statement on its own).
-- Variables: n (orders), seed (a number between -1 and 1).
\set ON_ERROR_STOP on
SELECT setseed(:seed) AS seeded \gset

WITH s AS (
	SELECT g,
		   1 + floor(random() * (SELECT count(*) FROM crm.customers))::int AS cid,
		   random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5
	FROM generate_series(1, :n) AS g
), a AS (
	SELECT s.g, c.id, c.name, c.phone, s.r4,
		   c.city || '市' ||
		   CASE c.city
			   WHEN '北京' THEN (ARRAY['朝阳区', '海淀区', '东城区', '丰台区'])[1 + floor(s.r1 * 4)::int]
							|| (ARRAY['建国路', '中关村大街', '东直门内大街', '丽泽路'])[1 + floor(s.r1 * 4)::int]
			   WHEN '上海' THEN (ARRAY['浦东新区', '徐汇区', '静安区', '黄浦区'])[1 + floor(s.r1 * 4)::int]
							|| (ARRAY['世纪大道', '漕溪北路', '南京西路', '淮海中路'])[1 + floor(s.r1 * 4)::int]
			   WHEN '广州' THEN (ARRAY['天河区', '越秀区', '海珠区', '番禺区'])[1 + floor(s.r1 * 4)::int]
							|| (ARRAY['天河路', '北京路', '新港中路', '市桥大道'])[1 + floor(s.r1 * 4)::int]
			   WHEN '深圳' THEN (ARRAY['南山区', '福田区', '罗湖区', '宝安区'])[1 + floor(s.r1 * 4)::int]
							|| (ARRAY['深南大道', '福华路', '人民南路', '宝安大道'])[1 + floor(s.r1 * 4)::int]
			   ELSE (ARRAY['西湖区', '上城区', '拱墅区', '滨江区'])[1 + floor(s.r1 * 4)::int]
							|| (ARRAY['文三路', '延安路', '莫干山路', '江南大道'])[1 + floor(s.r1 * 4)::int]
		   END
		   || (1 + floor(s.r2 * 999))::int || '号'
		   || (1 + floor(s.r3 * 12))::int || '栋'
		   || ((1 + floor(s.r5 * 30)::int) * 100 + 1 + floor(s.r2 * 6)::int) || '室' AS address
	FROM s JOIN crm.customers c ON c.id = s.cid
)
SELECT format('INSERT INTO crm.orders (customer_id, receiver_name, receiver_phone, receiver_address, amount)'
			  ' VALUES (%s, %L, %L, %L, %s)',
			  id, name, phone, address, round((29 + r4 * 970)::numeric, 2))
FROM a ORDER BY g
\gexec
